"""The invariance score of an encoder to a transform: how much closer it keeps an image and its
transformed view than two unrelated images (:func:`invariance`); the report measures it per
augmentation family (:mod:`vicreg_lightning.report.invariance`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from vicreg_lightning.metrics.health import CONSTANT_RTOL


@dataclass
class InvarianceScore:
    """See :func:`invariance`."""

    sim_same: float
    sim_unrelated: float
    score: float


def invariance(reference: Tensor, transformed: Tensor) -> InvarianceScore:
    """Invariance of a representation ``f`` to a transform ``T``, from ``f(x_i)`` and ``f(T(x_i))``
    (row i of ``reference`` and ``transformed``) for ``N ≥ 2`` images::

        c(v)          = v − 1/N · Σ_j f(x_j)                      (centred on the images' mean)
        sim_same      = 1/N · Σ_i cos(c(f(x_i)), c(f(T(x_i))))
        sim_unrelated = 1/(N(N−1)) · Σ_{i≠j} cos(c(f(x_i)), c(f(x_j)))
        invariance    = (sim_same − sim_unrelated) / (1 − sim_unrelated)

    1: every ``f(T(x))`` equals ``f(x)`` up to scale about the mean (fully invariant); 0: a
    transformed image is on average no closer to its original than another image of the set is (an
    unrelated image, of any class); negative: further.

    Why centred: the component every image shares (ReLU features are all non-negative, and an
    untrained network maps all images close to one direction: uncentred cosines of unrelated
    images near 0.9) says nothing about which image it is, yet dominates an uncentred cosine and
    makes any encoder look invariant. Centring removes it; ``sim_unrelated`` is then close to 0 and
    the normalisation keeps the scale "1 = identical, 0 = as far as an unrelated image" exact.
    Cosines are taken in float64; the unrelated mean runs over all ordered pairs ``i ≠ j``
    (exact, through ``‖Σ_i u_i‖² − Σ_i ‖u_i‖²`` for unit vectors ``u``). NaN when the reference
    has no spread (a collapsed representation: nothing to measure against).
    """
    if reference.shape != transformed.shape or reference.ndim != 2 or reference.shape[0] < 2:
        raise ValueError(
            f"expected two (N >= 2, D) matrices of the same shape; got {tuple(reference.shape)} and "
            f"{tuple(transformed.shape)}"
        )
    reference, transformed = reference.double(), transformed.double()
    mean = reference.mean(dim=0)
    centred = reference - mean
    # As health.mean_abs_offdiag_corr: a spread below float32 rounding of the values is no spread.
    if centred.square().sum().sqrt() <= CONSTANT_RTOL * reference.square().sum().sqrt():
        return InvarianceScore(math.nan, math.nan, math.nan)
    ref = F.normalize(centred, dim=1)
    trans = F.normalize(transformed - mean, dim=1)
    n = ref.shape[0]
    sim_same = float((ref * trans).sum(dim=1).mean())
    total = ref.sum(dim=0)
    sim_unrelated = float((total @ total - ref.square().sum()) / (n * (n - 1)))
    return InvarianceScore(sim_same, sim_unrelated, (sim_same - sim_unrelated) / (1.0 - sim_unrelated))
