"""What DDP needs beyond Lightning's defaults: BatchNorm synchronised on any device, and one job's
processes left as they were for the next job of a sweep. (The DDP children's command under Hydra
replaces a Lightning internal: :mod:`vicreg_lightning.patches`.)

The loss's own cross-rank gather lives with the loss (:class:`vicreg_lightning.loss.FullGather`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.plugins.layer_sync import TorchSyncBatchNorm
from torch import Tensor, nn


class AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable: every rank's output is the sum, so the gradient of the
    ranks' summed losses with respect to one rank's input is the sum of the incoming gradients.
    (``torch.distributed.nn.functional.all_reduce`` does this too, but is deprecated.)"""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, group: Any) -> Tensor:
        ctx.group = group
        total = tensor.clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor, None]:
        grad = grad_output.clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad, None


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose batch statistics are those of the global batch across CPU processes (gloo),
    where ``torch.nn.SyncBatchNorm`` refuses to run (and DDP refuses it in CPU modules).

    The statistics are all-reduced in two steps (sums and counts → mean, then squared deviations →
    variance, which avoids the cancellation of E[x²] − E[x]²), so every rank normalises exactly as
    one process on the concatenated batch would. The reductions are autograd functions whose
    backward is again an all-reduce SUM, as in torch's CUDA kernel, so the gradient through the
    statistics is the global one too. Outside a multi-process group, or in eval mode, it is plain
    BatchNorm; the state dict is BatchNorm's.
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected an input with a channel dimension, got shape {tuple(input.shape)}")

    def forward(self, input: Tensor) -> Tensor:
        distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if not (self.training and distributed):
            return super().forward(input)
        self._check_input_dim(input)
        channels = input.shape[1]
        reduce_dims = [d for d in range(input.dim()) if d != 1]
        shape = [1, channels] + [1] * (input.dim() - 2)
        # Statistics in at least float32 (autocast may hand us bf16/fp16).
        x = input.float() if input.dtype in (torch.float16, torch.bfloat16) else input
        count = torch.full((1,), input.numel() / channels, dtype=x.dtype)
        totals = AllReduceSum.apply(torch.cat([x.sum(reduce_dims), count]), None)
        n = totals[-1]
        mean = totals[:-1] / n
        centred = x - mean.view(shape)
        var = AllReduceSum.apply(centred.square().sum(reduce_dims), None) / n
        out = centred * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                # The running variance is the unbiased estimate, as in torch's BatchNorm.
                self.running_var.lerp_((var * (n / (n - 1))).to(self.running_var.dtype), factor)
        return out.to(input.dtype)


def convert_cpu_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by :class:`CPUSyncBatchNorm`, sharing its
    parameters and running statistics."""
    converted = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, CPUSyncBatchNorm):
        converted = CPUSyncBatchNorm(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        if module.affine:
            converted.weight, converted.bias = module.weight, module.bias
        if module.track_running_stats:
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
    for name, child in module.named_children():
        converted.add_module(name, convert_cpu_sync_batchnorm(child))
    return converted


class SyncBatchNormAnyDevice(TorchSyncBatchNorm):
    """Lightning's ``sync_batchnorm=True``: torch's ``SyncBatchNorm`` on GPUs, and
    :class:`CPUSyncBatchNorm` in CPU processes, so that DDP on CPU (the tests, debugging without
    GPUs) normalises as a GPU run does. (Lightning applies it after moving the model to its
    device; CPU layers need no reverting, as they are plain BatchNorm outside DDP.)"""

    def apply(self, model: nn.Module) -> nn.Module:
        device = next(model.parameters()).device
        return convert_cpu_sync_batchnorm(model) if device.type == "cpu" else super().apply(model)


# What Lightning's DDP launcher writes into the launching process's environment.
_LAUNCHER_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")


@contextmanager
def one_job_of_many() -> Iterator[None]:
    """Leave the process as it was before a DDP job: without its process group and without the
    variables Lightning's launcher set. Otherwise the next job of a ``-m`` sweep, run in the same
    process, would see ``LOCAL_RANK`` and take itself for a child that another launcher started,
    and would talk to the finished job's process group."""
    saved = {name: os.environ.get(name) for name in _LAUNCHER_VARIABLES}
    try:
        yield
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
