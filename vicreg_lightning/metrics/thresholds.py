"""Hidden threshold rules: what one threshold on the embeddings, set on the whole validation set,
does to each group.

Downstream systems decide with thresholds: "same item if cosine ≥ t" (deduplication, verification,
retrieval). A threshold chosen for a global false-match rate can give one group many times the
false matches of another: a rule about the group that nobody wrote down. :func:`match_audit` sets
``t`` on all pairs of validation images (a *genuine* pair shares a class, an *impostor* pair does
not) at global false-match rates (:data:`OPERATING_POINTS`) and at the equal-error point, then
reports per group the false-match rate (FMR) and the true-match rate (TMR), the ratio of the worst
group's FMR to the best's, and a flag where that ratio exceeds ``bound`` (default
:data:`DISPARITY_BOUND`). A group's pairs are those with both images in it (``pairs="within"``:
sites, devices, populations) or with at least one (``"involving"``: classes, which have no
impostor pair within).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

OPERATING_POINTS: tuple[float, ...] = (0.1, 0.01, 0.001)
DISPARITY_BOUND = 2.0


def pair_scores(embeddings: Tensor, labels: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Cosine similarity of every unordered pair of rows, whether it is genuine (same label), and
    the pair's two indices (from one N×N product: N² numbers, not N²/2 pairs of D-dim rows)."""
    z = torch.nn.functional.normalize(embeddings.double(), dim=1)
    first, second = torch.triu_indices(len(z), len(z), offset=1)
    cosine = (z @ z.T)[first, second]
    return cosine, labels[first] == labels[second], first, second


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
    ids = {name: i for i, name in enumerate(dict.fromkeys(names))}
    member = torch.tensor([ids[name] for name in names])
    a, b = member[first], member[second]
    index = torch.arange(len(first))
    if pairs == "within":
        return list(ids), index[a == b], a[a == b]
    other = a != b
    return list(ids), torch.cat([index, index[other]]), torch.cat([a, b[other]])


def fmr_curves(embeddings: Tensor, labels: Tensor, groups: Sequence[str], thresholds: Tensor,
               pairs: str = "within", only: Sequence[str] | None = None) -> dict[str, Tensor]:
    """The false-match rate at each of ``thresholds`` of every impostor pair (``"all"``) and of each
    group's (those in ``only``, when given)."""
    cosine, genuine, first, second = pair_scores(embeddings, labels)
    names, pair_index, group = group_pairs(groups, first, second, pairs)

    def curve(impostor: Tensor) -> Tensor:
        return 1 - torch.searchsorted(impostor.sort().values, thresholds.double(), side="left") / len(impostor)

    curves = {"all": curve(cosine[~genuine])}
    impostor = ~genuine[pair_index]
    for position, name in enumerate(names):
        scores = cosine[pair_index[impostor & (group == position)]]
        if len(scores) and (only is None or name in only):
            curves[name] = curve(scores)
    return curves


def match_audit(embeddings: Tensor, labels: Tensor, groups: Sequence[str] | Tensor,
                operating_points: Sequence[float] = OPERATING_POINTS, bound: float = DISPARITY_BOUND,
                pairs: str = "within") -> list[dict]:
    """Per operating point: ``{"point", "threshold", "global_fmr", "global_tmr", "groups": {group:
    {"fmr", "tmr", "impostor_pairs", "genuine_pairs"}}, "fmr_ratio", "worst", "best", "flagged"}``.

    The ratio is worst FMR / best FMR over the groups with impostor pairs (an FMR of 0 counts as
    one false match in the group's pairs, so that the ratio stays finite)."""
    names = list(groups) if not isinstance(groups, Tensor) else [str(int(g)) for g in groups]
    cosine, genuine, first, second = pair_scores(embeddings, labels)
    group_names, pair_index, group = group_pairs(names, first, second, pairs)
    count = len(group_names)
    impostor = ~genuine[pair_index]
    impostor_pairs = torch.bincount(group[impostor], minlength=count)
    genuine_pairs = torch.bincount(group[~impostor], minlength=count)
    points = [(f"FMR {p:g}", threshold_at_fmr(cosine[~genuine], p)) for p in operating_points]
    points.append(("equal error", equal_error_threshold(cosine[genuine], cosine[~genuine])))
    audit = []
    for point, threshold in points:
        matched = cosine >= threshold
        hit = matched[pair_index]
        false_matches = torch.bincount(group[impostor & hit], minlength=count)
        true_matches = torch.bincount(group[~impostor & hit], minlength=count)
        rows = {}
        for i, name in enumerate(group_names):
            imp, gen = int(impostor_pairs[i]), int(genuine_pairs[i])
            rows[name] = {"fmr": int(false_matches[i]) / imp if imp else None,
                          "tmr": int(true_matches[i]) / gen if gen else None,
                          "impostor_pairs": imp, "genuine_pairs": gen}
        rated = {name: row["fmr"] or 1 / row["impostor_pairs"] for name, row in rows.items() if row["fmr"] is not None}
        worst, best = max(rated, key=rated.get), min(rated, key=rated.get)
        ratio = rated[worst] / rated[best]
        audit.append({"point": point, "threshold": threshold,
                      "global_fmr": float(matched[~genuine].double().mean()),
                      "global_tmr": float(matched[genuine].double().mean()),
                      "groups": rows, "fmr_ratio": ratio, "worst": worst, "best": best, "flagged": ratio > bound})
    return audit
