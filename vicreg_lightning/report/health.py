"""The report's first section: the spectrum (singular values, RankMe), the per-dimension std and a
block of the correlation matrix of the backbone features and the expander embeddings, with their
figures and the ``health`` key of report.json (the numbers: :mod:`vicreg_lightning.metrics.health`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vicreg_lightning.metrics.health import mean_abs_offdiag_corr, rankme, std_stats
from vicreg_lightning.report.document import Document, fmt
from vicreg_lightning.report.plotting import pyplot, save_figure

CORRELATION_BLOCK = 64
# The same std threshold as the health callback's default: a tenth of VICReg's target std of 1.
STD_THRESHOLD = 0.1
FIGURES: tuple[str, ...] = ("spectrum.png", "std_hist.png", "correlation.png")


def health_section(doc: Document, spaces: dict[str, Tensor], device: torch.device, out: Path) -> dict[str, Any]:
    """Spectrum, RankMe, std and correlation of each space: the table, ``spectrum.png``, ``std_hist.png``,
    ``correlation.png`` and the ``health`` key."""
    doc.heading("Spectrum, RankMe, std and correlation")
    spectra, ranks, stds, rows, numbers = {}, {}, {}, [], {}
    for space, x in spaces.items():
        # Not centred, as RankMe's own definition, so that the plot and the number agree.
        spectra[space] = torch.linalg.svdvals(x.to(device).double()).float().cpu()
        ranks[space] = float(rankme(x))
        stds[space] = x.double().std(dim=0).float()
        stats = {name: float(value) for name, value in std_stats(x, STD_THRESHOLD).items()}
        corr = float(mean_abs_offdiag_corr(x))
        rows.append([space, x.shape[1], fmt(ranks[space], 1), fmt(stats["min"]), fmt(stats["mean"]),
                     fmt(stats["frac_below"]), fmt(corr)])
        numbers[space] = {"dim": x.shape[1], "rankme": ranks[space], **{f"std_{k}": v for k, v in stats.items()},
                          "mean_abs_corr": corr}
    plot_spectrum(spectra, {space: x.shape[1] for space, x in spaces.items()}, ranks, out / "spectrum.png")
    plot_std_hist(stds, out / "std_hist.png")
    corr_space = "embeddings" if "embeddings" in spaces else "features"
    plot_correlation(correlation_block(spaces[corr_space]), corr_space, out / "correlation.png")
    doc.table(["space", "dim", "RankMe", "std min", "std mean", f"frac std < {STD_THRESHOLD:g}", "mean abs corr"], rows)
    n = len(next(iter(spaces.values())))
    doc.text(f"RankMe is at most min(N, D), here N = {n} validation images: compare reports at equal N. "
             "Mean abs corr: mean absolute off-diagonal Pearson correlation of the dimensions.")
    doc.figure("spectrum.png", "Singular values (not centred, as RankMe), divided by the largest; log scale")
    doc.figure("std_hist.png", f"Per-dimension std over the validation set; red: {STD_THRESHOLD:g}")
    doc.figure("correlation.png", f"Pearson correlation of the first {CORRELATION_BLOCK} {corr_space} dimensions")
    return {"health": numbers}


def plot_spectrum(spectra: dict[str, Tensor], dims: dict[str, int], ranks: dict[str, float], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for space, values in spectra.items():
        ax.semilogy(np.arange(1, len(values) + 1), (values / values[0]).numpy(),
                    label=f"{space} ({dims[space]}-d, RankMe {ranks[space]:.1f})")
    ax.set(xlabel="index k", ylabel="σ_k / σ_1", title="Singular values on the validation set")
    ax.legend()
    save_figure(fig, path)


def plot_std_hist(stds: dict[str, Tensor], path: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(stds), figsize=(5 * len(stds), 3.5), squeeze=False)
    for ax, (space, std) in zip(axes[0], stds.items(), strict=True):
        ax.hist(std.numpy(), bins=50)
        ax.axvline(STD_THRESHOLD, color="red", linestyle="--", label=f"{STD_THRESHOLD:g}")
        if space == "embeddings":
            ax.axvline(1.0, color="green", linestyle=":", label="VICReg target 1")
        ax.set(xlabel="std over the validation set", ylabel="dimensions", title=f"Per-dimension std: {space}")
        ax.legend()
    save_figure(fig, path)


def correlation_block(x: Tensor, size: int = CORRELATION_BLOCK) -> np.ndarray:
    block = x[:, :size].double()
    # NaN for constant dimensions (dead units have no correlation): shown blank.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(block.T.numpy())


def plot_correlation(corr: np.ndarray, space: str, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    image = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(image, ax=ax)
    ax.set(title=f"Correlation, first {len(corr)} dims of the {space}", xlabel="dim", ylabel="dim")
    save_figure(fig, path)
