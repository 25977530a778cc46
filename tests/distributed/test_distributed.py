"""CPUSyncBatchNorm, the DDP child command and the loader workers of a DDP process, with real gloo."""

from __future__ import annotations

import sys

import pytest
import torch
import torch.distributed as dist
from torch import nn

from tests.runs import configs
from tests.spawn import run_ranks
from vicreg_lightning.data.datamodule import VICRegDataModule, worker_start_method
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


def test_a_ddp_process_starts_its_loader_workers_from_a_forkserver_on_a_python_with_the_fork_bug(tmp_path):
    # CPython gh-112275 (before 3.11.8): a forked worker can hang for ever on a lock that one of DDP's
    # threads held at the fork. One process keeps fork (fast, nothing else to wait on).
    assert worker_start_method(1) is None
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        assert worker_start_method(1) == ("forkserver" if sys.version_info < (3, 11, 8) else None)
        dm = VICRegDataModule(*configs("digits", size=8, batch_size=16, num_workers=1))
        dm.setup("fit")
        loader = dm.val_dataloader()
        assert (loader.multiprocessing_context is not None) == (sys.version_info < (3, 11, 8))
        images, labels = next(iter(loader))  # the data set and its transform travel to the worker
        expected = [dm.val_set[index] for index in range(len(labels))]
        torch.testing.assert_close(images, torch.stack([image for image, _ in expected]))
        assert labels.tolist() == [label for _, label in expected]
    finally:
        dist.destroy_process_group()
