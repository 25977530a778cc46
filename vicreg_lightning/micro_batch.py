"""Micro-batching: the exact gradient of a large batch's VICReg loss from backbone passes over
small micro-batches (``data.micro_batch_size``).

VICReg's variance and covariance are statistics of the whole batch, so gradient accumulation
(averaging the losses of small batches) optimises another objective. Gradient caching (Gao, Zhang,
Han, Callan, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup", RepL4NLP
2021, arXiv 2101.06983) keeps the objective and bounds the memory of the backbone's graph:

1. pass 1 encodes every micro-batch without a graph, recording the random state each started from;
2. the expander, the loss (with its gather across ranks) and the probe run once on the cached
   features of the whole device batch, with a graph; autograd gives the gradient with respect to
   those features and to the expander's and the probe's parameters;
3. pass 2 encodes each micro-batch again, with a graph and pass 1's random state (dropout and
   drop-path draw the same masks), and back-propagates its slice of the features' gradient;
4. the gradients reach the parameters through one backward of the returned loss
   (:class:`_GivenGradients`), so that Lightning's precision, clipping and accumulation and DDP's
   all-reduce (once per step, in that backward) see one ordinary step.

What is exact: the expander's BatchNorm sees the whole device batch (the global batch under
SyncBatchNorm), so a backbone without batch statistics (a ViT; LayerNorm or GroupNorm networks)
gives the one-pass step's loss and gradients. A backbone with BatchNorm normalises each micro-batch
with its own statistics ("ghost" BatchNorm, as DDP without SyncBatchNorm over virtual devices), and
its running statistics are updated once per micro-batch in pass 1 only (:func:`_kept_statistics`).
The cost is one more backbone forward per step.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from vicreg_lightning.errors import ConfigError

Encode = Callable[[tuple[Tensor, ...]], tuple[Tensor, ...]]


def check_micro_batch_size(micro_batch_size: int | None, per_device_batch: int) -> None:
    """A micro-batch must divide each device's share of the batch, which every step has."""
    if micro_batch_size is None:
        return
    if micro_batch_size < 1 or per_device_batch % micro_batch_size:
        raise ConfigError(
            f"data.micro_batch_size={micro_batch_size}: must divide the per-device batch of {per_device_batch} "
            "(data.batch_size over the devices); use a divisor of it, or null for one pass"
        )


def micro_batched_step(
    encode: Encode,
    inputs: tuple[Tensor, ...],
    micro_batch_size: int,
    objective: Callable[[tuple[Tensor, ...]], tuple[Tensor, Any]],
    encoder: nn.Module,
    head: Sequence[nn.Parameter],
) -> tuple[Tensor, Any]:
    """``(loss, extras)`` of ``objective(encode(inputs))`` on the whole batch, with ``encode`` run
    on micro-batches of ``micro_batch_size`` samples (slices of every input along dimension 0).

    ``encoder`` holds the parameters ``encode`` uses, ``head`` those ``objective`` uses. The loss's
    backward gives every one of them its gradient for the whole batch (zero where it has none)."""
    batch = inputs[0].shape[0]
    check_micro_batch_size(micro_batch_size, batch)
    slices = [slice(start, start + micro_batch_size) for start in range(0, batch, micro_batch_size)]
    device = inputs[0].device

    states, cached = [], []
    with torch.no_grad():
        for part in slices:
            states.append(_random_state(device))
            cached.append(encode(tuple(x[part] for x in inputs)))
    after_pass_1 = _random_state(device)
    features = tuple(torch.cat(pieces).requires_grad_() for pieces in zip(*cached))
    loss, extras = objective(features)

    head = [p for p in head if p.requires_grad]
    grads = torch.autograd.grad(loss, [*features, *head], allow_unused=True)
    feature_grads, head_grads = grads[: len(features)], grads[len(features):]

    encoder_params = [p for p in encoder.parameters() if p.requires_grad]
    encoder_grads: list[Tensor | None] = [None] * len(encoder_params)
    with _kept_statistics(encoder):
        for part, state in zip(slices, states):
            _set_random_state(state, device)
            outputs = encode(tuple(x[part] for x in inputs))
            pairs = [(out, grad[part]) for out, grad in zip(outputs, feature_grads) if grad is not None]
            partial = torch.autograd.grad([out for out, _ in pairs], encoder_params,
                                          [grad for _, grad in pairs], allow_unused=True)
            for i, grad in enumerate(partial):
                if grad is not None:
                    encoder_grads[i] = grad if encoder_grads[i] is None else encoder_grads[i].add_(grad)
    _set_random_state(after_pass_1, device)

    params = [*encoder_params, *head]
    given = [torch.zeros_like(p) if g is None else g for p, g in zip(params, [*encoder_grads, *head_grads])]
    return _GivenGradients.apply(loss.detach(), given, *params), extras


class _GivenGradients(torch.autograd.Function):
    """Returns ``loss``; its backward hands each parameter its precomputed gradient, times the
    incoming gradient (Lightning's loss scaling and 1/accumulation reach them as they would)."""

    @staticmethod
    def forward(ctx: Any, loss: Tensor, gradients: list[Tensor], *params: Tensor) -> Tensor:
        ctx.gradients = gradients
        return loss.clone()

    @staticmethod
    def backward(ctx: Any, grad_output: Tensor) -> tuple[Tensor | None, ...]:
        # In place and released: the parameters' .grad can take these tensors over, so the step
        # never holds two copies of the gradients.
        gradients, ctx.gradients = ctx.gradients, None
        return (None, None, *(g.mul_(grad_output.to(g.dtype)) for g in gradients))


@contextmanager
def _kept_statistics(module: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics as they were on entry: pass 2 normalises each micro-batch as
    pass 1 did (with its batch statistics) but must not count its samples a second time."""
    kept = [(buffer, buffer.clone()) for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for buffer in (m.running_mean, m.running_var, m.num_batches_tracked) if buffer is not None]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in kept:
                buffer.copy_(value)


def _random_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def _set_random_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    cpu, cuda = state
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
