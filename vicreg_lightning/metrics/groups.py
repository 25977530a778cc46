"""Distances between groups of features: the Fréchet distance between Gaussians fitted to two sets
(:func:`frechet_distance`), and the leave-one-out outlier flag (:func:`outlier_flags`)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

OUTLIER_NUM_STD = 2.0


def group_index(names: Sequence[str]) -> tuple[list[str], Tensor]:
    """The distinct group names in order of first appearance, and each sample's position among them."""
    ids = {name: i for i, name in enumerate(dict.fromkeys(names))}
    return list(ids), torch.tensor([ids[name] for name in names])


def _trace_sqrt_product(a: Tensor, b: Tensor) -> Tensor:
    """``Tr((S_a^½ S_b S_a^½)^½)`` for ``S_a = aᵀa``, ``S_b = bᵀb``, in the cheapest form.

    The eigenvalues of ``S_a S_b`` are the squared singular values of ``a bᵀ``, so the trace is the
    nuclear norm ``‖a bᵀ‖_*``: through an ``n×n`` eigen-problem when a set has fewer samples than
    dimensions (a class of a few dozen images in 2048-d), else through the ``D×D`` one."""
    n_small = min(a.shape[0], b.shape[0])
    if n_small <= a.shape[1]:
        small, large = (a, b) if a.shape[0] <= b.shape[0] else (b, a)
        cross = small @ large.T
        eigenvalues = torch.linalg.eigvalsh(cross @ cross.T)
    else:
        values, vectors = torch.linalg.eigh(a.T @ a)
        root = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
        eigenvalues = torch.linalg.eigvalsh(root @ (b.T @ b) @ root)
    # Rounding leaves the zero eigenvalues of these PSD products slightly negative.
    return eigenvalues.clamp_min(0).sqrt().sum()


def frechet_distance(x: Tensor, y: Tensor) -> float:
    """Squared Fréchet (2-Wasserstein) distance between Gaussians fitted to two sets of vectors
    (Dowson and Landau, J. Multivariate Anal. 1982; as FID, Heusel et al., NeurIPS 2017)::

        d² = ‖μ_x − μ_y‖² + Tr(Σ_x) + Tr(Σ_y) − 2 Tr((Σ_x^½ Σ_y Σ_x^½)^½)

    with the unbiased sample covariances (``N − 1``), in float64. Exact for rank-deficient
    covariances (fewer samples than dimensions) without any ``D×D`` square root there
    (:func:`_trace_sqrt_product`). Both sets need at least 2 rows."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"expected two (N >= 2, D) sets of the same width; got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    mean_x, mean_y = x.mean(dim=0), y.mean(dim=0)
    # Scaled so that Σ = aᵀa.
    a = (x - mean_x) / math.sqrt(len(x) - 1)
    b = (y - mean_y) / math.sqrt(len(y) - 1)
    distance = (mean_x - mean_y).square().sum() + a.square().sum() + b.square().sum() - 2 * _trace_sqrt_product(a, b)
    return float(distance.clamp_min(0))


def outlier_flags(values: Sequence[float], num_std: float = OUTLIER_NUM_STD) -> list[bool]:
    """Which values stand apart: ``v_g > mean + num_std · std`` of the *other* values (leave-one-out,
    so that an outlier does not raise its own bar; std with ``N − 1``). Needs at least 3 values (two
    others for a spread); fewer flag nothing."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) < 3:
        return [False] * len(array)
    flags = []
    for g in range(len(array)):
        others = np.delete(array, g)
        flags.append(bool(array[g] > others.mean() + num_std * others.std(ddof=1)))
    return flags
