"""The report's PNG figures, drawn with matplotlib (Agg backend, imported on first use): spectrum,
per-dimension std, correlation block, per-class probe accuracy, confusion matrix, embedding map,
invariance per family, threshold rules per group and group stability."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from torch import Tensor

from vicreg_lightning.report.groups import GroupStats
from vicreg_lightning.report.invariance import FAMILIES, FamilyInvariance, RecipeEntry
from vicreg_lightning.report.source import SPACES

CORRELATION_BLOCK = 64
# The same std threshold as the health callback's default: a tenth of VICReg's target std of 1.
STD_THRESHOLD = 0.1


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def _plot_spectrum(spectra: dict[str, Tensor], dims: dict[str, int], ranks: dict[str, float], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for space, values in spectra.items():
        ax.semilogy(np.arange(1, len(values) + 1), (values / values[0]).numpy(),
                    label=f"{space} ({dims[space]}-d, RankMe {ranks[space]:.1f})")
    ax.set(xlabel="index k", ylabel="σ_k / σ_1", title="Singular values on the validation set")
    ax.legend()
    _save(fig, path)


def _plot_std_hist(stds: dict[str, Tensor], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stds), figsize=(5 * len(stds), 3.5), squeeze=False)
    for ax, (space, std) in zip(axes[0], stds.items(), strict=True):
        ax.hist(std.numpy(), bins=50)
        ax.axvline(STD_THRESHOLD, color="red", linestyle="--", label=f"{STD_THRESHOLD:g}")
        if space == "embeddings":
            ax.axvline(1.0, color="green", linestyle=":", label="VICReg target 1")
        ax.set(xlabel="std over the validation set", ylabel="dimensions", title=f"Per-dimension std: {space}")
        ax.legend()
    _save(fig, path)


def _correlation_block(x: Tensor, size: int = CORRELATION_BLOCK) -> np.ndarray:
    block = x[:, :size].double()
    # NaN for constant dimensions (dead units have no correlation): shown blank.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(block.T.numpy())


def _plot_correlation(corr: np.ndarray, space: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    image = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(image, ax=ax)
    ax.set(title=f"Correlation, first {len(corr)} dims of the {space}", xlabel="dim", ylabel="dim")
    _save(fig, path)


def _plot_per_class(names: Sequence[str], accuracy: np.ndarray, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names)), 3.5))
    ax.bar(range(len(names)), accuracy)
    if len(names) <= 50:
        ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 12 else 0)
    ax.set(ylim=(0, 1), xlabel="class", ylabel="accuracy", title="Linear probe: per-class validation accuracy")
    _save(fig, path)


def _plot_confusion(matrix: np.ndarray, names: Sequence[str], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if len(names) <= 20:
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(names)), names)
        for i, j in zip(*np.nonzero(matrix), strict=True):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="Linear probe: confusion matrix")
    _save(fig, path)


def _plot_map(coords: np.ndarray, labels: np.ndarray, names: Sequence[str], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    scatter = ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap="tab10" if len(names) <= 10 else "tab20", s=8)
    if len(names) <= 20:
        ax.legend(scatter.legend_elements()[0], [names[i] for i in np.unique(labels)], fontsize=7, markerscale=0.8,
                  loc="best")
    ax.set(title=title, xticks=[], yticks=[])
    _save(fig, path)


def _plot_invariance(
    recipe: list[RecipeEntry], measured: dict[str, FamilyInvariance], baseline: dict[str, FamilyInvariance] | None,
    path: Path,
) -> None:
    plt = _pyplot()
    series = [(f"{space}", measured, space) for space in SPACES if space in measured[FAMILIES[0]].scores]
    if baseline is not None:
        series.append(("features, untrained", baseline, "features"))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(series)
    x = np.arange(len(recipe))
    for s, (label, results, space) in enumerate(series):
        ax.bar(x + (s - (len(series) - 1) / 2) * width, [results[e.family].scores[space].score for e in recipe],
               width, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [f"{e.family}\n(trained)" if e.trained else e.family for e in recipe])
    ax.set(ylabel="invariance (1 = invariant, 0 = unrelated)", title="Invariance per augmentation family")
    ax.legend()
    _save(fig, path)


class Panel(NamedTuple):
    """One panel of ``thresholds.png``: a rate against the threshold, for every pair or image and
    per group, and the audit's thresholds (dicts with ``threshold`` and ``flagged``)."""

    thresholds: Tensor
    overall: Tensor
    groups: dict[str, Tensor]
    lines: list[dict]


def _plot_thresholds(match: Panel, decision: Panel | None, decision_class: str, path: Path) -> None:
    """Left: each group's false-match rate against the cosine threshold; right: each group's
    false-positive rate against the probe's threshold for one class's decision; log scales, the
    audits' thresholds as vertical lines (red: flagged)."""
    plt = _pyplot()
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
    _save(fig, path)


def _plot_groups(rows: list[GroupStats], path: Path) -> None:
    plt = _pyplot()
    names = [r.name for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.4 * len(rows)), 6), sharex=True)
    top.bar(range(len(rows)), [r.distance for r in rows], color=["red" if r.flagged else "tab:blue" for r in rows])
    top.set(ylabel="Fréchet distance to the rest", title="Groups: distance (red: flagged), kNN accuracy, RankMe")
    bottom.bar(range(len(rows)), [r.knn_accuracy for r in rows], color="tab:green")
    bottom.set(ylabel="kNN accuracy", ylim=(0, 1))
    rank_axis = bottom.twinx()
    rank_axis.plot(range(len(rows)), [r.rankme_features for r in rows], "ko-", markersize=3, label="RankMe (features)")
    rank_axis.set_ylabel("RankMe (features)")
    if len(rows) <= 50:
        bottom.set_xticks(range(len(rows)), names, rotation=45 if len(rows) > 4 else 0, ha="right")
    _save(fig, path)
