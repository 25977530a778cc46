"""CPUSyncBatchNorm and the DDP child command, in real gloo processes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.spawn import run_ranks
from vicreg_lightning.distributed import CPUSyncBatchNorm, convert_cpu_sync_batchnorm
from vicreg_lightning.patches import _config_flags

WORLD, N_PER_RANK, CHANNELS = 2, 5, 3


def rank_inputs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per rank: an input with its own scale and offset (asymmetric), and weights for its loss."""
    g = torch.Generator().manual_seed(3)
    return [
        ((1 + 2 * r) * torch.randn(N_PER_RANK, CHANNELS, 4, 4, generator=g, dtype=torch.float64) + r,
         torch.randn(N_PER_RANK, CHANNELS, 4, 4, generator=g, dtype=torch.float64))
        for r in range(WORLD)
    ]


def batchnorm() -> nn.BatchNorm2d:
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(CHANNELS, momentum=0.3).double()
    nn.init.uniform_(bn.weight, 0.5, 1.5)
    nn.init.uniform_(bn.bias, -0.5, 0.5)
    return bn


def _rank_forward_backward(rank: int) -> dict[str, torch.Tensor]:
    bn = convert_cpu_sync_batchnorm(batchnorm())
    x, w = rank_inputs()[rank]
    x.requires_grad_()
    y = bn(x)
    (y * w).sum().backward()
    return {"y": y.detach(), "x_grad": x.grad, "weight_grad": bn.weight.grad, "bias_grad": bn.bias.grad,
            "running_mean": bn.running_mean, "running_var": bn.running_var}


def test_cpu_sync_batchnorm_equals_batchnorm_on_the_concatenated_batch():
    inputs = rank_inputs()
    bn = batchnorm()
    x = torch.cat([x for x, _ in inputs]).requires_grad_()
    y = bn(x)
    (y * torch.cat([w for _, w in inputs])).sum().backward()

    ranks = run_ranks(_rank_forward_backward, WORLD)
    for rank, out in ranks.items():
        rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
        torch.testing.assert_close(out["y"], y.detach()[rows], rtol=1e-10, atol=1e-12)
        # The gradient through the global mean/variance reaches each rank's input.
        torch.testing.assert_close(out["x_grad"], x.grad[rows], rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(out["running_mean"], bn.running_mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out["running_var"], bn.running_var, rtol=1e-10, atol=1e-12)
    # Affine parameters: per-rank gradients add up to the single-process gradient.
    torch.testing.assert_close(sum(o["weight_grad"] for o in ranks.values()), bn.weight.grad, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(sum(o["bias_grad"] for o in ranks.values()), bn.bias.grad, rtol=1e-9, atol=1e-12)


def test_cpu_sync_batchnorm_is_batchnorm_in_one_process():
    reference, x = batchnorm(), rank_inputs()[0][0]
    converted = convert_cpu_sync_batchnorm(nn.Sequential(batchnorm()))
    assert isinstance(converted[0], CPUSyncBatchNorm)
    torch.testing.assert_close(converted(x), reference(x))
    converted.eval(), reference.eval()
    torch.testing.assert_close(converted(x), reference(x))
    assert converted.state_dict().keys() == {f"0.{k}" for k in reference.state_dict()}


@pytest.mark.parametrize(
    "argv,kept",
    [
        (["-m", "loss.sim_coeff=10,25", "trainer=ddp"], []),
        (["-cn", "train", "--config-dir=/x", "-m", "a=1,2"], ["-cn", "train", "--config-dir=/x"]),
        (["--config-path", "conf", "a=1"], ["--config-path", "conf"]),
    ],
)
def test_ddp_children_keep_the_config_flags_but_not_the_sweep(argv, kept):
    assert _config_flags(argv) == kept


