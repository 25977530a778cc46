"""Hidden threshold rules: what one threshold on the embeddings, set on the whole validation set,
does to each group.

Downstream systems decide with thresholds: "same item if cosine ≥ t" (deduplication, verification,
retrieval). A threshold chosen for a global false-match rate can give one group many times the
false matches of another: a rule about the group that nobody wrote down. :func:`match_audit` sets
``t`` on all pairs of validation images (a *genuine* pair shares a class, an *impostor* pair does
not) at global false-match rates (:data:`OPERATING_POINTS`) and at the equal-error point, then
reports per group the false-match rate (FMR) and the true-match rate (TMR), the ratio of the worst
group's FMR to the best's, and a flag where that ratio exceeds ``bound`` (default
:data:`DISPARITY_BOUND`) and what chance gives: the ratio reached by random groups of the same
sizes (a permutation test over the images, which keeps the dependence of pairs that share an
image). A group's pairs are those with both images in it (``pairs="within"``:
sites, devices, populations) or with at least one (``"involving"``: classes, which have no
impostor pair within).

:func:`decision_audit` does the same for the other rule, "positive if score ≥ t" (a linear probe's
one-vs-rest decision for each class): ``t`` set on all validation images at global false-positive
rates and at the equal-error point, and per group the positive rate, the error rate and the
false-positive rate among the group's images of other classes, whose worst/best ratio is flagged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from vicreg_lightning.metrics.groups import group_index

OPERATING_POINTS: tuple[float, ...] = (0.1, 0.01, 0.001)
DISPARITY_BOUND = 2.0
# A disparity is flagged only above what random groups of the same sizes reach (this quantile of
# PERMUTATIONS regroupings): with few false matches per group, chance alone gives large ratios.
PERMUTATIONS = 100
CHANCE_QUANTILE = 0.99


class PairScores(NamedTuple):
    """Every unordered pair of rows: its cosine, whether it is genuine (same label), its two rows."""

    cosine: Tensor
    genuine: Tensor
    first: Tensor
    second: Tensor


def pair_scores(embeddings: Tensor, labels: Tensor) -> PairScores:
    """Cosine similarity of every unordered pair of rows, whether it is genuine (same label), and
    the pair's two indices (from one N×N product: N² numbers, not N²/2 pairs of D-dim rows)."""
    z = torch.nn.functional.normalize(embeddings.double(), dim=1)
    first, second = torch.triu_indices(len(z), len(z), offset=1)
    cosine = (z @ z.T)[first, second]
    return PairScores(cosine, labels[first] == labels[second], first, second)


def threshold_at_fmr(impostor: Tensor, fmr: float) -> float:
    """The smallest threshold whose false-match rate over ``impostor`` scores is at most ``fmr``
    (a pair matches when its score is ≥ the threshold)."""
    ordered = impostor.sort(descending=True).values
    allowed = int(fmr * len(ordered))  # impostor pairs that may match
    if allowed >= len(ordered):
        return float(ordered[-1])
    # Just above the (allowed+1)-th highest impostor score: exactly ``allowed`` pairs match (ties aside).
    return float(torch.nextafter(ordered[allowed], torch.tensor(float("inf"), dtype=ordered.dtype)))


def equal_error_threshold(genuine: Tensor, impostor: Tensor) -> float:
    """The threshold where the false-match rate equals the false-non-match rate (the closest of the
    observed scores)."""
    candidates = torch.cat([genuine, impostor]).unique()
    fmr = 1 - torch.searchsorted(impostor.sort().values, candidates, side="left") / len(impostor)
    fnmr = torch.searchsorted(genuine.sort().values, candidates, side="left") / len(genuine)
    return float(candidates[(fmr - fnmr).abs().argmin()])


def group_pairs(names: Sequence[str], first: Tensor, second: Tensor, pairs: str) -> tuple[list[str], Tensor, Tensor]:
    """The groups, and which pairs each holds as two aligned lists (a pair's index, a group's
    position): both images in the group (``within``) or at least one (``involving``)."""
    if pairs not in ("within", "involving"):
        raise ValueError(f"pairs={pairs!r}: choose within or involving")
    group_names, member = group_index(names)
    a, b = member[first], member[second]
    index = torch.arange(len(first))
    if pairs == "within":
        return group_names, index[a == b], a[a == b]
    other = a != b
    return group_names, torch.cat([index, index[other]]), torch.cat([a, b[other]])


def _disparity(failures: Tensor, totals: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per column of ``(groups, K)`` counts: the worst group's failure rate over the best's, and
    their rows, among the groups with a total; a best rate of 0 counts as one failure (the ratio
    stays finite), a worst rate of 0 gives 1; NaN with fewer than two such groups."""
    compared = totals > 0
    rate = failures / totals.clamp(min=1)
    worst = rate.masked_fill(~compared, -math.inf).max(0)
    best = torch.where(failures > 0, rate, 1 / totals.clamp(min=1)).masked_fill(~compared, math.inf).min(0)
    ratio = torch.where(worst.values > 0, worst.values / best.values, torch.ones_like(worst.values))
    ratio[compared.sum(0) < 2] = math.nan
    return ratio, worst.indices, best.indices


def _chance(ratio_of: Callable[[Tensor], Tensor], member: Tensor, permutations: int, seed: int) -> Tensor:
    """The :data:`CHANCE_QUANTILE` quantile of ``ratio_of(groups)`` over ``permutations`` random
    regroupings of the same images into groups of the same sizes: the disparity that chance alone
    gives (NaN: no permutations)."""
    if permutations == 0:
        return torch.full_like(ratio_of(member), math.nan)
    generator = torch.Generator().manual_seed(seed)
    shuffled = [ratio_of(member[torch.randperm(len(member), generator=generator)]) for _ in range(permutations)]
    return torch.stack(shuffled).nan_to_num(nan=1.0).quantile(CHANCE_QUANTILE, dim=0)


def fmr_curves(scored: PairScores, groups: Sequence[str], thresholds: Tensor, pairs: str = "within",
               only: Sequence[str] | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The false-match rate at each of ``thresholds`` of every impostor pair (:func:`pair_scores`),
    and of each group's (those in ``only``, when given)."""
    cosine, genuine, first, second = scored
    names, pair_index, group = group_pairs(groups, first, second, pairs)
    curves = {}
    impostor = ~genuine[pair_index]
    for position, name in enumerate(names):
        scores = cosine[pair_index[impostor & (group == position)]]
        if len(scores) and (only is None or name in only):
            curves[name] = share_at_or_above(scores, thresholds)
    return share_at_or_above(cosine[~genuine], thresholds), curves


def share_at_or_above(scores: Tensor, thresholds: Tensor) -> Tensor:
    """The share of ``scores`` ≥ each of ``thresholds`` (a false-match or false-positive rate curve
    when ``scores`` are those of the negatives)."""
    return 1 - torch.searchsorted(scores.double().sort().values, thresholds.double(), side="left") / len(scores)


def match_audit(embeddings: Tensor, labels: Tensor, groups: Sequence[str] | Tensor,
                operating_points: Sequence[float] = OPERATING_POINTS, bound: float = DISPARITY_BOUND,
                pairs: str = "within", permutations: int = PERMUTATIONS, seed: int = 0,
                scored: PairScores | None = None) -> list[dict]:
    """Per operating point: ``{"point", "threshold", "global_fmr", "global_tmr", "groups": {group:
    {"fmr", "tmr", "impostor_pairs", "genuine_pairs"}}, "fmr_ratio", "worst", "best",
    "chance_ratio", "flagged"}``.

    The ratio is worst FMR / best FMR over the groups with impostor pairs (see :func:`_disparity`);
    ``chance_ratio`` is what random groups of the same sizes reach (:func:`_chance`); flagged: the
    ratio exceeds both ``bound`` and the chance ratio. With fewer than two groups holding impostor
    pairs, the ratio, ``worst``, ``best`` and ``chance_ratio`` are None. ``scored``: the
    :func:`pair_scores` of ``embeddings`` and ``labels`` when the caller has them already."""
    names = list(groups) if not isinstance(groups, Tensor) else [str(int(g)) for g in groups]
    if pairs not in ("within", "involving"):
        raise ValueError(f"pairs={pairs!r}: choose within or involving")
    cosine, genuine, first, second = scored if scored is not None else pair_scores(embeddings, labels)
    group_names, member = group_index(names)
    count = len(group_names)
    points = [(f"FMR {p:g}", threshold_at_fmr(cosine[~genuine], p)) for p in operating_points]
    points.append(("equal error", equal_error_threshold(cosine[genuine], cosine[~genuine])))
    matched = torch.stack([cosine >= threshold for _, threshold in points], dim=1)  # (pairs, points)

    # Per pair: false match at each point, impostor, true match at each point, genuine (float32 counts
    # are exact far beyond the 2·10⁶ pairs of THRESHOLD_MAX_SAMPLES images).
    kinds = len(points)
    stats = torch.cat([matched & ~genuine[:, None], ~genuine[:, None], matched & genuine[:, None], genuine[:, None]],
                      dim=1).float()
    # A group's "involving" pairs are the pairs of its images, less those counted twice (both images in it):
    # per-image sums do not change when images are regrouped, so each regrouping costs one pass over pairs.
    per_image = torch.zeros(len(names), stats.shape[1]).index_add_(0, first, stats).index_add_(0, second, stats)

    def counts(member: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        a = member[first]
        within = a == member[second]
        totals = torch.zeros(count, stats.shape[1]).index_add_(0, a[within], stats[within])
        if pairs == "involving":
            totals = torch.zeros(count, stats.shape[1]).index_add_(0, member, per_image) - totals
        totals = totals.double()
        return (totals[:, :kinds], totals[:, kinds].unsqueeze(1).expand(-1, kinds),
                totals[:, kinds + 1:2 * kinds + 1], totals[:, -1].unsqueeze(1).expand(-1, kinds))

    false_matches, impostor_pairs, true_matches, genuine_pairs = counts(member)
    ratio, worst, best = _disparity(false_matches, impostor_pairs)
    chance = _chance(lambda shuffled: _disparity(*counts(shuffled)[:2])[0], member, permutations, seed)
    audit = []
    for k, (point, threshold) in enumerate(points):
        rows = {}
        for i, name in enumerate(group_names):
            imp, gen = int(impostor_pairs[i, k]), int(genuine_pairs[i, k])
            rows[name] = {"fmr": float(false_matches[i, k]) / imp if imp else None,
                          "tmr": float(true_matches[i, k]) / gen if gen else None,
                          "impostor_pairs": imp, "genuine_pairs": gen}
        audit.append({"point": point, "threshold": threshold,
                      "global_fmr": float(matched[~genuine, k].double().mean()),
                      "global_tmr": float(matched[genuine, k].double().mean()),
                      "groups": rows, **_comparison(ratio[k], worst[k], best[k], chance[k], group_names, bound)})
    return audit


def _comparison(ratio: Tensor, worst: Tensor, best: Tensor, chance: Tensor, names: Sequence[str], bound: float,
                key: str = "fmr_ratio") -> dict:
    # None, not NaN, where fewer than two groups can be compared (report.json stays strict JSON).
    if math.isnan(float(ratio)):
        return {key: None, "worst": None, "best": None, "chance_ratio": None, "flagged": False}
    return {key: float(ratio), "worst": names[int(worst)], "best": names[int(best)],
            "chance_ratio": _none_if_nan(chance), "flagged": _flagged(ratio, chance, bound)}


def _flagged(ratio: Tensor, chance: Tensor, bound: float) -> bool:
    return bool(ratio > bound) and not bool(ratio <= chance)  # a NaN chance (no permutations) never vetoes


def _none_if_nan(value: Tensor) -> float | None:
    return None if math.isnan(float(value)) else float(value)


def decision_audit(scores: Tensor, labels: Tensor, groups: Sequence[str],
                   operating_points: Sequence[float] = OPERATING_POINTS, bound: float = DISPARITY_BOUND,
                   permutations: int = PERMUTATIONS, seed: int = 0) -> list[dict]:
    """The one-vs-rest rule "class c if ``scores[:, c]`` ≥ t_c" for every class c (a column of
    ``scores``, e.g. a probe's probabilities), t_c set on all rows at each global false-positive rate
    of ``operating_points`` and at the equal-error point (false-positive = false-negative rate).

    Per operating point: ``{"point", "decisions", "flagged_decisions", "worst_class", "threshold",
    "fpr_ratio", "worst", "best", "chance_ratio", "flagged", "groups": {group: {"images",
    "positive_rate", "error_rate", "fpr", "false_positives", "negatives", "mean_error_rate"}},
    "classes": {c: {"threshold", "fpr_ratio", "worst", "best", "chance_ratio", "flagged"}}}``;
    ``groups`` describes the decision of ``worst_class``, the flagged class whose worst/best ratio of
    group false-positive rates is the largest (of all classes when none is flagged);
    ``mean_error_rate`` is the group's error rate averaged over every class's decision. The ratio
    (:func:`_disparity`) compares the groups holding images of other classes: a group made of class
    c alone has no false positive of c to compare. Flagged as in :func:`match_audit`. Empty when no
    decision can be compared (no class has images of other classes in two groups)."""
    group_names, member = group_index(groups)
    scores = scores.double()
    classes = scores.shape[1]
    positive = labels[:, None] == torch.arange(classes)
    evaluable = (~positive).any(0) & positive.any(0)

    def per_group(x: Tensor, member: Tensor) -> Tensor:  # (N, C) -> (groups, C) sums
        return torch.zeros(len(group_names), classes, dtype=torch.float64).index_add_(0, member, x.double())

    images = torch.bincount(member, minlength=len(group_names)).double()[:, None]
    negatives = per_group(~positive, member)
    audit = []
    for point, thresholds in _decision_thresholds(scores, positive, evaluable, operating_points):
        decided = scores >= thresholds
        wrong_positive = decided & ~positive

        def compare(member: Tensor) -> tuple[Tensor, Tensor, Tensor]:
            ratio, worst, best = _disparity(per_group(wrong_positive, member), per_group(~positive, member))
            return ratio.masked_fill(~evaluable, math.nan), worst, best

        ratio, worst, best = compare(member)
        chance = _chance(lambda shuffled: compare(shuffled)[0], member, permutations, seed)
        false_positives = per_group(wrong_positive, member)
        summary = {str(c): {"threshold": float(thresholds[c]),
                            **_comparison(ratio[c], worst[c], best[c], chance[c], group_names, bound, "fpr_ratio")}
                   for c in range(classes) if not math.isnan(float(ratio[c]))}
        if not summary:  # every group holds one class, or no class has images in two groups
            return []
        flagged = [name for name, row in summary.items() if row["flagged"]]
        worst_class = max(flagged or summary, key=lambda c: summary[c]["fpr_ratio"])
        c = int(worst_class)
        fpr = false_positives / negatives
        positive_rate, error_rate = per_group(decided, member) / images, per_group(decided ^ positive, member) / images
        rows = {name: {"images": int(images[g]), "positive_rate": float(positive_rate[g, c]),
                       "error_rate": float(error_rate[g, c]),
                       "mean_error_rate": float(error_rate[g, evaluable].mean()),
                       "fpr": float(fpr[g, c]) if negatives[g, c] > 0 else None,
                       "false_positives": int(false_positives[g, c]), "negatives": int(negatives[g, c])}
                for g, name in enumerate(group_names)}
        audit.append({"point": point, "decisions": len(summary), "flagged_decisions": len(flagged),
                      "worst_class": worst_class, **summary[worst_class], "groups": rows, "classes": summary})
    return audit


def _decision_thresholds(scores: Tensor, positive: Tensor, evaluable: Tensor, operating_points: Sequence[float]
                         ) -> list[tuple[str, Tensor]]:
    # Each column's thresholds from its own negatives and positives (columns without both: +inf, never positive).
    points = []
    for rate in operating_points:
        thresholds = torch.full((scores.shape[1],), math.inf, dtype=torch.float64)
        for c in evaluable.nonzero().flatten().tolist():
            thresholds[c] = threshold_at_fmr(scores[~positive[:, c], c], rate)
        points.append((f"FPR {rate:g}", thresholds))
    thresholds = torch.full((scores.shape[1],), math.inf, dtype=torch.float64)
    for c in evaluable.nonzero().flatten().tolist():
        thresholds[c] = equal_error_threshold(scores[positive[:, c], c], scores[~positive[:, c], c])
    points.append(("equal error", thresholds))
    return points
