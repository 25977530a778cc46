"""The report's section on hidden threshold rules: the same-item rule on the embeddings
(:func:`~vicreg_lightning.metrics.thresholds.match_audit`) and the linear probe's decisions
(:func:`~vicreg_lightning.metrics.thresholds.decision_audit`), per class or per metadata group."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from vicreg_lightning.data.catalog import UNLABELED
from vicreg_lightning.features import Features
from vicreg_lightning.metrics.thresholds import (
    CHANCE_QUANTILE,
    OPERATING_POINTS,
    PERMUTATIONS,
    decision_audit,
    fmr_curves,
    match_audit,
    pair_scores,
    share_at_or_above,
)
from vicreg_lightning.report.config import ReportOptions
from vicreg_lightning.report.document import Document, fmt
from vicreg_lightning.report.plotting import pyplot, save_figure

# Pairs grow as N²: the same-item audit reads a seeded draw of at most this many validation images.
THRESHOLD_MAX_SAMPLES = 2000
PLOTTED_GROUPS = 12  # the figure's curves: the groups with the most false matches at the 1% point
TABLE_GROUPS = 30  # groups listed in the per-group table (the others are in report.json)
ONE_PERCENT = OPERATING_POINTS.index(0.01)  # the operating point of the figure and the per-group table
FIGURES: tuple[str, ...] = ("thresholds.png",)


def thresholds_section(doc: Document, val: Features, probabilities: np.ndarray, names: Sequence[str],
                       groups: Sequence[str] | None, options: ReportOptions, out: Path) -> dict[str, Any]:
    """Both audits on the labelled validation images, grouped by ``groups`` (one name per image of
    ``val``, from ``--groups-csv``) or, when None, by class: the section, ``thresholds.png`` and the
    ``thresholds`` key of report.json."""
    doc.heading("Hidden threshold rules: one threshold, per group")
    labelled = torch.nonzero(val.labels != UNLABELED).flatten()
    if groups is None:
        groups = [f"class {names[int(label)]}" if label != UNLABELED else "" for label in val.labels]
    # Classes have no impostor pair inside: a class's pairs are those involving one of its images.
    pairs = "within" if options.groups_csv else "involving"
    source = f"the groups of {options.groups_csv}" if options.groups_csv else "the classes"

    drawn = labelled
    if len(drawn) > THRESHOLD_MAX_SAMPLES:
        draw = torch.randperm(len(drawn), generator=torch.Generator().manual_seed(options.seed))
        drawn = drawn[draw[:THRESHOLD_MAX_SAMPLES]].sort().values
    space = "embeddings" if val.embeddings is not None else "features"
    z, labels, drawn_groups = val.space(space)[drawn], val.labels[drawn], [groups[i] for i in drawn]
    scored = pair_scores(z, labels)  # the N×N cosines, for the audit and the figure
    match = match_audit(z, labels, drawn_groups, bound=options.threshold_bound, pairs=pairs, seed=options.seed,
                        scored=scored)

    decision_groups = [groups[i] for i in labelled]
    scores = torch.from_numpy(probabilities)[labelled]
    decision = decision_audit(scores, val.labels[labelled], decision_groups, bound=options.threshold_bound,
                              seed=options.seed)

    at_one_percent = match[ONE_PERCENT]["groups"]
    plotted = sorted(at_one_percent, key=lambda name: -(at_one_percent[name]["fmr"] or 0))[:PLOTTED_GROUPS]
    cosines = torch.linspace(-1, 1, 401)
    every_pair, per_group = fmr_curves(scored, drawn_groups, cosines, pairs=pairs, only=plotted)
    plot_thresholds(Panel(cosines, every_pair, per_group, match),
                     _decision_panel(decision, scores, val.labels[labelled], decision_groups),
                     names[int(decision[ONE_PERCENT]["worst_class"])] if decision else "", out / "thresholds.png")

    _match_table(doc, match)
    doc.text(f"The rule \"same item if cosine ≥ t\" on the {space} of {len(z)} validation images: every pair of "
             "images, genuine when both share a class, an impostor pair otherwise. t is set on all pairs at a "
             "false-match rate (FMR: the share of impostor pairs that match) of 10%, 1% and 0.1%, and where FMR "
             "equals the false-non-match rate (equal error); TMR is the share of genuine pairs that match. Groups: "
             + ("the classes, each with the pairs that involve one of its images. " if pairs == "involving" else
                f"{source}, each with the pairs of two of its images. ")
             + f"Worst / best: the worst group's FMR over the best's (a best FMR of 0 counts as one false match in "
             f"the group's pairs). By chance: the {CHANCE_QUANTILE:.0%} quantile of that ratio over {PERMUTATIONS} "
             "random regroupings of the same images into groups of the same sizes. Flagged: the ratio above both "
             f"{options.threshold_bound:g}× (--threshold-bound) and chance. A flag says the same threshold makes "
             "many more false matches for one group than another, more than chance explains: a rule about that "
             "group that nobody wrote.")
    if decision:
        _decision_table(doc, decision, names)
    else:
        doc.text(f"No probe decision can be compared across {source}: no class has images of other classes in "
                 "two groups (each group holds one class). The probe audit needs groups that mix classes.")
    doc.text(f"The rule \"class c if the linear probe's probability of c ≥ t\" (one decision per class, on "
             f"{len(labelled)} validation images), t set on all images at a false-positive rate (FPR: the share of "
             "images of other classes decided c) of 10%, 1% and 0.1%, and at the equal-error point. Per decision, "
             f"the FPR of each of {source} among its images of other classes, its worst/best ratio and chance "
             "ratio as above; the row names the flagged decision with the largest ratio (the largest of all when "
             f"none is flagged) and counts the flagged decisions (by chance alone, about {1 - CHANCE_QUANTILE:.0%} "
             "of them).")
    _group_table(doc, match[ONE_PERCENT], decision[ONE_PERCENT] if decision else None, names)
    doc.figure("thresholds.png", "Per group: false-match rate against the cosine threshold, and false-positive "
               "rate of the probe's worst decision at FPR 1% against its threshold")
    return {"thresholds": {"space": space, "groups": "metadata" if options.groups_csv else "classes",
                           "groups_csv": options.groups_csv, "pairs": pairs, "samples": len(z),
                           "bound": options.threshold_bound, "operating_points": match,
                           "probe_samples": len(labelled), "probe": decision}}


def _decision_panel(decision: list[dict], scores: Tensor, labels: Tensor, groups: Sequence[str]) -> Panel | None:
    """The figure's curves for the worst probe decision at FPR 1%: the false-positive rate of every
    image of another class, and of each group's, against the probability threshold."""
    if not decision:
        return None
    point = decision[ONE_PERCENT]
    c = int(point["worst_class"])
    grid = torch.logspace(-6, 0, 401)  # a probe's probabilities for other classes sit near 0
    negative = labels != c
    group_of = np.array(groups)
    worst_first = sorted(point["groups"], key=lambda name: -(point["groups"][name]["fpr"] or 0))[:PLOTTED_GROUPS]
    curves = {}
    for name in worst_first:
        rows = negative & torch.from_numpy(group_of == name)
        if bool(rows.any()):
            curves[name] = share_at_or_above(scores[rows, c], grid)
    lines = [row["classes"][str(c)] for row in decision if str(c) in row["classes"]]
    return Panel(grid, share_at_or_above(scores[negative, c], grid), curves, lines)


def _group_cell(row: dict[str, Any], name: str | None, rate: str) -> str:
    if name is None:
        return "–"
    group = row["groups"][name]
    counts = f": {group['false_positives']} of {group['negatives']}" if "negatives" in group else ""
    return f"{name} ({fmt(group[rate])}{counts})"


def _match_table(doc: Document, audit: list[dict]) -> None:
    doc.table(["operating point", "threshold", "FMR (all)", "TMR (all)", "worst group (FMR)", "best group (FMR)",
               "worst / best", "by chance", "flagged"],
              [[row["point"], fmt(row["threshold"]), fmt(row["global_fmr"]), fmt(row["global_tmr"]),
                _group_cell(row, row["worst"], "fmr"), _group_cell(row, row["best"], "fmr"), fmt(row["fmr_ratio"], 2),
                fmt(row["chance_ratio"], 2), "**yes**" if row["flagged"] else ""] for row in audit])


def _decision_table(doc: Document, audit: list[dict], names: Sequence[str]) -> None:
    doc.table(["operating point", "decisions flagged", "worst decision", "threshold", "worst group (FPR)",
               "best group (FPR)", "worst / best", "by chance", "flagged"],
              [[row["point"], f"{row['flagged_decisions']} of {row['decisions']}",
                f"class {names[int(row['worst_class'])]}", f"{row['threshold']:.3g}",
                _group_cell(row, row["worst"], "fpr"), _group_cell(row, row["best"], "fpr"),
                fmt(row["fpr_ratio"], 2), fmt(row["chance_ratio"], 2), "**yes**" if row["flagged"] else ""]
               for row in audit])


def _group_table(doc: Document, match_point: dict[str, Any], probe_point: dict[str, Any] | None,
                 names: Sequence[str]) -> None:
    c = names[int(probe_point["worst_class"])] if probe_point else None
    shown = sorted(match_point["groups"], key=lambda name: -(match_point["groups"][name]["fmr"] or 0))[:TABLE_GROUPS]
    rows = []
    for name in shown:
        pair, probe = match_point["groups"][name], (probe_point or {}).get("groups", {}).get(name, {})
        rows.append([name, probe.get("images", "–"), fmt(pair["fmr"]), fmt(pair["tmr"]),
                     fmt(probe.get("positive_rate")), fmt(probe.get("error_rate")),
                     fmt(probe.get("mean_error_rate"))])
    doc.table(["group", "images", "FMR", "TMR", f"probe 'class {c}': positive rate", "error rate",
               "probe: mean error rate (all decisions)"], rows)
    more = f" (the {TABLE_GROUPS} with the highest FMR; every group is in report.json)" if len(match_point["groups"]) \
        > TABLE_GROUPS else ""
    doc.text(f"Per group at the 1% operating points{more}: the same-item rule's FMR and TMR, and the probe's "
             f"decision 'class {c}' (the worst at FPR 1%): the share of the group's images decided positive and "
             "decided wrongly; the last column averages the group's error rate over every class's decision.")


class Panel(NamedTuple):
    """One panel of ``thresholds.png``: a rate against the threshold, for every pair or image and
    per group, and the audit's thresholds (dicts with ``threshold`` and ``flagged``)."""

    thresholds: Tensor
    overall: Tensor
    groups: dict[str, Tensor]
    lines: list[dict]


def plot_thresholds(match: Panel, decision: Panel | None, decision_class: str, path: Path) -> None:
    """Left: each group's false-match rate against the cosine threshold; right: each group's
    false-positive rate against the probe's threshold for one class's decision; log scales, the
    audits' thresholds as vertical lines (red: flagged)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    groups = sorted({name for panel in (match, decision) if panel for name in panel.groups})
    palette = plt.get_cmap("tab20")
    colour = {name: palette(i % 20) for i, name in enumerate(groups)}  # a group has one colour in both panels
    for ax, panel, xscale, xlabel, ylabel, title in (
        (axes[0], match, "linear", "cosine threshold (same item if cosine ≥ t)", "false-match rate",
         "Same-item rule: false-match rate per group"),
        (axes[1], decision, "log", f"probe probability threshold (class {decision_class} if p ≥ t)",
         "false-positive rate", f"Probe decision 'class {decision_class}': false-positive rate per group"),
    ):
        if panel is None:
            ax.text(0.5, 0.5, "no probe decision to compare across these groups", ha="center", va="center")
            ax.set_axis_off()
            continue
        x = panel.thresholds.numpy()
        ax.plot(x, panel.overall.clamp(min=1e-5).numpy(), color="black", linewidth=2.5, label="all")
        for name, rate in panel.groups.items():
            ax.plot(x, rate.clamp(min=1e-5).numpy(), color=colour[name], linewidth=1, alpha=0.8, label=name)
        for row in panel.lines:
            ax.axvline(row["threshold"], color="red" if row["flagged"] else "grey", linestyle=":", linewidth=1)
        ax.set(xscale=xscale, yscale="log", xlabel=xlabel, ylabel=ylabel, title=title)
        ax.legend(fontsize=6, ncol=2)
    save_figure(fig, path)
