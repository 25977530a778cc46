"""VICRegLoss under torch.distributed: 2 real processes (gloo) against one process.

Each rank holds *different* embeddings. After DDP's average over ranks, each rank's gradient must
equal the single-process gradient on the concatenated batch: a gather that drops the other ranks'
gradient (1/W too small) or a loss scaled by W (W× too large) fails this test.
"""

from __future__ import annotations

import pytest
import torch

from tests.spawn import run_ranks
from vicreg_lightning import VICRegLoss

WORLD = 2
N_PER_RANK, DIM = 6, 10


def shards() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(11)
    out = []
    for rank in range(WORLD):
        scale = 1.0 + rank  # asymmetric data across ranks
        z_a = scale * torch.randn(N_PER_RANK, DIM, generator=g, dtype=torch.float64)
        out.append((z_a, z_a + 0.3 * torch.randn(N_PER_RANK, DIM, generator=g, dtype=torch.float64)))
    return out


def _rank_loss(rank: int) -> tuple[float, float, float, torch.Tensor, torch.Tensor]:
    z_a, z_b = (t.clone().requires_grad_() for t in shards()[rank])
    out = VICRegLoss()(z_a, z_b)
    out.loss.backward()
    return out.loss.item(), out.variance.item(), out.covariance.item(), z_a.grad.clone(), z_b.grad.clone()


def test_two_rank_loss_and_gradients_equal_single_process():
    data = shards()
    full_a = torch.cat([a for a, _ in data]).requires_grad_()
    full_b = torch.cat([b for _, b in data]).requires_grad_()
    single = VICRegLoss()(full_a, full_b)
    single.loss.backward()

    results = run_ranks(_rank_loss, WORLD)

    # Variance and covariance are computed on the gathered batch: every rank has the global value.
    # Invariance is local, so the rank losses average (as DDP averages) to the global loss.
    for rank in range(WORLD):
        assert results[rank][1] == pytest.approx(single.variance.item(), rel=1e-10)
        assert results[rank][2] == pytest.approx(single.covariance.item(), rel=1e-10)
    mean_loss = sum(results[r][0] for r in range(WORLD)) / WORLD
    assert mean_loss == pytest.approx(single.loss.item(), rel=1e-10)
    for rank in range(WORLD):
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        *_, grad_a, grad_b = results[rank]
        # DDP averages gradients over ranks: rank gradient / W must be the single-process one.
        torch.testing.assert_close(grad_a / WORLD, full_a.grad[rows], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(grad_b / WORLD, full_b.grad[rows], rtol=1e-9, atol=1e-12)
