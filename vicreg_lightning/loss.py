"""The VICReg loss (Bardes, Ponce, LeCun, "VICReg: Variance-Invariance-Covariance Regularization
for Self-Supervised Learning", ICLR 2022, arXiv:2105.04906).

For two batches of embeddings ``Z, Z'`` of shape ``(N, D)``::

    s(Z, Z') = 1/(N·D) Σ_i ‖z_i − z'_i‖²                       invariance (MSE)
    v(Z)     = 1/D Σ_j relu(1 − sqrt(Var(z^j) + eps))            variance hinge (unbiased Var)
    c(Z)     = 1/D Σ_{i≠j} C(Z)_ij²,  C(Z) = Z̄ᵀZ̄ / (N − 1)      covariance (Z̄ centred)

Two weightings are offered:

``weighting="official"`` (default) is the released code (``facebookresearch/vicreg``,
``main_vicreg.py``), the one behind the paper's 73.2% ImageNet top-1::

    loss = λ·s + μ·[v(Z) + v(Z')]/2 + ν·[c(Z) + c(Z')]

``weighting="paper"`` is the paper's Eq. 6 / Algorithm 1, without the ½ on the variance::

    loss = λ·s + μ·[v(Z) + v(Z')] + ν·[c(Z) + c(Z')]

so at the same coefficients the paper weighs the variance twice as much as the code
(vicreg#8, #26). ``variance`` in the returned :class:`VICRegLossOutput` is the bracket including
the ½ where the weighting has one, so ``loss == λ·invariance + μ·variance + ν·covariance`` always.

Multi-crop. With ``L`` local crops ``Z_3 … Z_V`` besides the two global views ``Z_1, Z_2``
(``V = 2 + L`` views of the same ``N`` samples), the terms generalise as VICRegL's global loss
(Bardes, Ponce, LeCun, NeurIPS 2022, ``main_vicregl.py``): invariance averages over the pairs of a
global view with every other view, variance and covariance over the views::

    s = 1/(2(V−1)) Σ_{g∈{1,2}} Σ_{j≠g} s(Z_g, Z_j)
    v = 1/V Σ_v v(Z_v)     (official)        v = 2/V Σ_v v(Z_v)     (paper)
    c = 2/V Σ_v c(Z_v)

The factor 2/V keeps today's scale: with ``V = 2`` each line is exactly the two-view term above
(the pair (1, 2) is counted from both sides: 2·s(Z_1, Z_2) / 2).

Under ``torch.distributed`` the variance and covariance see the embeddings of every rank, through
:class:`FullGather` whose backward sums the gradients over ranks; invariance stays local. Each rank
then holds W× the gradient of the global var/cov terms for its own samples and DDP's 1/W average
makes it exact, so no world-size scaling is applied anywhere (two known bug classes: dropping the
other ranks' gradient, lightly#1528; scaling by W on top of a summing gather).

Variance and covariance are computed in float32 even under autocast: the covariance of
unnormalised 8192-d embeddings overflows float16.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from vicreg_lightning.choices import WEIGHTINGS

Weighting = Literal["official", "paper"]  # one of WEIGHTINGS


@dataclass
class VICRegLossOutput:
    """The weighted total and the three unweighted terms of one VICReg evaluation."""

    loss: Tensor
    invariance: Tensor
    variance: Tensor
    covariance: Tensor


class FullGather(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums the incoming gradients over ranks and returns
    this rank's slice (the official ``FullGatherLayer``). Works on gloo and NCCL."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        chunks = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(chunks, x.contiguous())
        return torch.cat(chunks)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather_from_all_ranks(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank (differentiably) when a process group is running."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return FullGather.apply(x)
    return x


class GramFrobeniusSq(torch.autograd.Function):
    """‖ZᵀZ‖²_F = ‖ZZᵀ‖²_F through the smaller of the two products, with a one-matmul backward
    d/dZ = 4·Z(ZᵀZ) = 4·(ZZᵀ)Z (autograd of ``(z.T @ z).square().sum()`` would take two)."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:  # type: ignore[override]
        n, d = z.shape
        product = z @ z.T if n < d else z.T @ z
        ctx.save_for_backward(z, product)
        return product.square().sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        z, product = ctx.saved_tensors
        n, d = z.shape
        return (4 * grad) * (product @ z if n < d else z @ product)


def branch_terms(z: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """v(Z) and c(Z) of one branch.

    v(Z) is the mean over dimensions of relu(1 − sqrt(Var + eps)), unbiased variance; c(Z) the
    sum of the squared off-diagonal entries of the covariance matrix, divided by D.

    The off-diagonal sum is ‖Z̄ᵀZ̄‖²_F minus the squared diagonal, and that diagonal is the column
    sums of squares that the variance needs too. With N samples of D dimensions the D×D matrix
    costs O(N·D²); when N < D the same Frobenius norm comes from the N×N Gram matrix
    (‖Z̄ᵀZ̄‖_F = ‖Z̄Z̄ᵀ‖_F): O(N²·D), and no D×D matrix is ever formed.
    """
    n, d = z.shape
    z = z - z.mean(dim=0)
    column_sq = z.square().sum(dim=0)  # (N − 1)·Var_j, and the diagonal of Z̄ᵀZ̄
    std = torch.sqrt(column_sq / (n - 1) + eps)
    variance = F.relu(1.0 - std).mean()
    off_diagonal_sq = GramFrobeniusSq.apply(z) - column_sq.square().sum()
    return variance, off_diagonal_sq / ((n - 1) ** 2 * d)


class VICRegLoss(nn.Module):
    """VICReg loss; see the module docstring for the equations and the two weightings.

    Args:
        sim_coeff: λ, weight of the invariance term (official 25).
        std_coeff: μ, weight of the variance term (official 25).
        cov_coeff: ν, weight of the covariance term (official 1).
        eps: added to the variance before the square root (official 1e-4).
        weighting: ``"official"`` (released code, variance averaged over branches) or
            ``"paper"`` (Eq. 6, variance summed over branches).
        gather_distributed: compute variance and covariance over the batch of all ranks when
            ``torch.distributed`` is initialised (official behaviour).
    """

    def __init__(
        self,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        eps: float = 1e-4,
        weighting: Weighting = "official",
        gather_distributed: bool = True,
    ) -> None:
        super().__init__()
        for name, value in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff)):
            if value < 0:
                raise ValueError(f"{name}={value}: loss coefficients must be >= 0")
        if eps <= 0:
            raise ValueError(f"eps={eps}: must be > 0 (it keeps sqrt differentiable at zero variance)")
        if weighting not in WEIGHTINGS:
            raise ValueError(f"weighting={weighting!r}: choose one of {', '.join(WEIGHTINGS)}")
        self.sim_coeff = sim_coeff
        self.std_coeff = std_coeff
        self.cov_coeff = cov_coeff
        self.eps = eps
        self.weighting = weighting
        self.gather_distributed = gather_distributed

    def extra_repr(self) -> str:
        return (
            f"sim_coeff={self.sim_coeff}, std_coeff={self.std_coeff}, cov_coeff={self.cov_coeff}, "
            f"eps={self.eps}, weighting={self.weighting!r}"
        )

    def forward(self, z_a: Tensor, z_b: Tensor, *z_local: Tensor) -> VICRegLossOutput:
        """The loss of two global views' embeddings ``z_a``, ``z_b`` and of any local crops' (multi-crop)."""
        views = (z_a, z_b, *z_local)
        _check_embeddings(views)
        # The MSE would be safe in half precision; float32 keeps the three terms comparable.
        a, b = _at_least_float32(z_a), _at_least_float32(z_b)
        invariance = F.mse_loss(a, b)
        if z_local:
            pairs = 2 * invariance + sum(F.mse_loss(g, _at_least_float32(z)) for z in z_local for g in (a, b))
            invariance = pairs / (2 * (len(views) - 1))

        if self.gather_distributed:
            views = tuple(gather_from_all_ranks(z) for z in views)
        if views[0].shape[0] < 2:
            raise ValueError(
                f"batch of {views[0].shape[0]} sample: VICReg's variance and covariance need at least "
                "2 samples; raise the batch size"
            )
        with torch.autocast(device_type=z_a.device.type, enabled=False):
            variances, covariances = zip(*(branch_terms(_at_least_float32(z), self.eps) for z in views))
        # Sums in view order, so that two views give exactly (v_a + v_b) / 2 and c_a + c_b.
        variance = sum(variances) / len(views)
        if self.weighting == "paper":
            variance = variance * 2
        covariance = sum(covariances) * (2 / len(views))

        loss = self.sim_coeff * invariance + self.std_coeff * variance + self.cov_coeff * covariance
        # Not checked here: a check reads the device on the host (vicreg_lightning/divergence.py).
        return VICRegLossOutput(loss=loss, invariance=invariance, variance=variance, covariance=covariance)


def _at_least_float32(z: Tensor) -> Tensor:
    return z.float() if z.dtype in (torch.float16, torch.bfloat16) else z


def _check_embeddings(views: tuple[Tensor, ...]) -> None:
    shapes = [tuple(z.shape) for z in views]
    if any(len(shape) != 2 for shape in shapes):
        raise ValueError(f"embeddings must be 2-D (batch, dim); got shapes {', '.join(map(str, shapes))}")
    if len(set(shapes)) > 1:
        raise ValueError(f"the views' embeddings differ in shape: {' vs '.join(map(str, shapes))}")
