"""Representation-health metrics (pure tensor functions); the callback that watches them during
training is :class:`vicreg_lightning.callbacks.health.RepresentationHealth`.

Self-supervised losses say little about whether the representation is still useful: a VICReg run
whose embeddings have collapsed to a few directions can show a smooth loss curve. The numbers here
are computed on a fixed set of validation images, label-free:

- RankMe (Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the downstream performance of
  pretrained self-supervised representations by their rank", ICML 2023, arXiv:2210.02885), the
  effective rank of the representation, which tracks linear-probe accuracy across hyperparameters;
- the per-dimension standard deviation, the quantity VICReg's variance hinge pushes up to 1
  (Bardes, Ponce, LeCun, ICLR 2022): complete collapse drives every std to 0;
- the mean absolute off-diagonal correlation, the redundancy VICReg's covariance term pushes down.

All of them are reported for the embeddings (expander output, what the loss sees) and for the
features (backbone output, what is shipped and probed).
"""

from __future__ import annotations


import torch
from torch import Tensor


SPACES: tuple[str, ...] = ("embed", "feat")
METRICS: tuple[str, ...] = ("rankme", "std_min", "std_mean", "std_frac_below", "mean_abs_corr")
# Every key of health_metrics(), in a stable order: "<space>_<metric>", logged as "health/<key>".
HEALTH_METRIC_NAMES: tuple[str, ...] = tuple(f"{space}_{metric}" for space in SPACES for metric in METRICS)

# A dimension whose std is below this fraction of its RMS value is constant up to rounding: float32
# inputs carry ~1e-7 relative precision, so a smaller spread is noise, and its "correlations" too.
CONSTANT_RTOL = 1e-6


def _as_matrix(x: Tensor, name: str = "x") -> Tensor:
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, dims); got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} has {x.shape[0]} sample(s): a spread over the batch needs at least 2")
    return x.detach()


def _float64(x: Tensor) -> Tensor:
    # MPS has no float64: those few statistics go through the CPU there.
    return (x.cpu() if x.device.type == "mps" else x).double()


@torch.no_grad()
def rankme(x: Tensor, eps: float = 1e-7) -> Tensor:
    """RankMe of an ``(N, D)`` representation (Garrido et al., ICML 2023)::

        p_k = σ_k(x) / ‖σ(x)‖₁ + eps,    RankMe(x) = exp(−Σ_k p_k log p_k),   k = 1 … min(N, D)

    The singular values are those of ``x`` as given, *not* centred: the paper defines RankMe on
    the embedding matrix itself, with the same ``eps`` (1e-7, for float32). A shared offset is
    therefore one more direction (a collapsed, constant, non-zero embedding scores ≈1, not 0).

    ``x`` of rank ``k`` with equal non-zero singular values gives ≈ ``k``; unequal ones give less.
    The value is at most ``m = min(N, D)`` up to ``eps``: the ``eps`` on every term lifts the sum
    of ``p`` to ``1 + m·eps``, and a flat spectrum then scores ``m·(1 + m·eps·(log m − 1))``, i.e.
    3e-4 too high at m = 512, 1.4e-3 at 2048 (kept: it is the paper's formula). It saturates at the
    number of samples, so compare runs at equal ``N``.

    σ² are the eigenvalues of the smaller Gram matrix (``x xᵀ`` or ``xᵀ x``), in float64: 20×
    faster than an SVD of a 512×8192 matrix on CPU, and float64 resolves singular values down to
    ~1e-8·σ_max, below which ``p_k`` is already swamped by ``eps``. An all-zero ``x`` gives ≈1
    (every ``p_k = eps``), a non-finite one NaN.
    """
    x = _as_matrix(x)
    if not torch.isfinite(x).all():
        return torch.tensor(float("nan"), device=x.device)
    x64 = _float64(x)
    gram = x64 @ x64.T if x64.shape[0] <= x64.shape[1] else x64.T @ x64
    # Rounding can leave the zero eigenvalues of a rank-deficient Gram matrix slightly negative.
    singular_values = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    # An all-zero matrix has ‖σ‖₁ = 0: treat it as fully collapsed instead of dividing 0 by 0.
    p = singular_values / singular_values.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return torch.exp(-(p * p.log()).sum()).float().to(x.device)


@torch.no_grad()
def std_stats(x: Tensor, threshold: float) -> dict[str, Tensor]:
    """Per-dimension standard deviation over the batch of an ``(N, D)`` matrix, summarised.

    The std is unbiased (``N − 1``), as in VICReg's variance term, and computed in float64 so that
    dimensions with a large offset keep their spread. Returns float32 scalars ``"min"``, ``"mean"``
    and ``"frac_below"``: the fraction of dimensions whose std is below ``threshold``.
    """
    x = _as_matrix(x)
    std = _float64(x).std(dim=0, correction=1)
    return {
        "min": std.min().float().to(x.device),
        "mean": std.mean().float().to(x.device),
        "frac_below": (std < threshold).double().mean().float().to(x.device),
    }


@torch.no_grad()
def mean_abs_offdiag_corr(x: Tensor, block_size: int = 1024) -> Tensor:
    """Mean of ``|C_ij|`` over ``i ≠ j``, ``C`` the ``D×D`` Pearson correlation matrix of ``(N, D)``.

    Constant dimensions (std at most :data:`CONSTANT_RTOL` × their RMS value, e.g. dead units) have
    no correlation — numpy's ``corrcoef`` gives NaN there — and are left out: the mean runs over the
    pairs of non-constant dimensions, so the number measures redundancy among the dimensions that
    are alive (how many are dead is what :func:`std_stats` reports). With fewer than two
    non-constant dimensions there is no pair, and the result is 0.

    Centring and scaling are done in float64; the ``D×D`` products in float32 (correlations lie in
    [−1, 1], so float32 is accurate to ~1e-6 there), ``block_size`` rows at a time so that an
    8192-d embedding never materialises its 256 MiB correlation matrix at once.
    """
    x = _as_matrix(x)
    n = x.shape[0]
    x64 = _float64(x)
    centred = x64 - x64.mean(dim=0)
    std = centred.square().sum(dim=0).div(n - 1).sqrt()
    alive = std > CONSTANT_RTOL * x64.square().mean(dim=0).sqrt()
    k = int(alive.sum())
    if k < 2:
        return torch.zeros((), device=x.device)
    z = (centred[:, alive] / std[alive]).float()
    total = torch.zeros((), dtype=torch.float64, device=z.device)
    for start in range(0, k, block_size):
        block = z[:, start : start + block_size].T @ z / (n - 1)
        # The diagonal is 1 up to rounding: subtract the computed one rather than k.
        total += block.abs().sum(dtype=torch.float64) - block.diagonal(offset=start).abs().sum(dtype=torch.float64)
    return (total / (k * (k - 1))).float().to(x.device)


@torch.no_grad()
def health_metrics(embeddings: Tensor, features: Tensor, std_threshold: float = 0.1) -> dict[str, Tensor]:
    """Every health number of a batch, keyed ``"<space>_<metric>"`` (:data:`HEALTH_METRIC_NAMES`).

    ``space`` is ``embed`` (the expander's output) or ``feat`` (the backbone's); ``metric`` is
    ``rankme``, ``std_min``, ``std_mean``, ``std_frac_below`` (std below ``std_threshold``) and
    ``mean_abs_corr``. Values are float32 scalars.
    """
    if embeddings.shape[0] != features.shape[0]:
        raise ValueError(
            f"embeddings and features must come from the same samples; got {embeddings.shape[0]} "
            f"and {features.shape[0]} rows"
        )
    metrics: dict[str, Tensor] = {}
    for space, x in (("embed", embeddings), ("feat", features)):
        _as_matrix(x, name=space)
        metrics[f"{space}_rankme"] = rankme(x)
        for stat, value in std_stats(x, std_threshold).items():
            metrics[f"{space}_std_{stat}"] = value
        metrics[f"{space}_mean_abs_corr"] = mean_abs_offdiag_corr(x)
    return {name: metrics[name] for name in HEALTH_METRIC_NAMES}
