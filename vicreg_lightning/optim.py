"""Optimisers and the learning-rate schedule of VICReg pretraining.

The encoder (backbone + expander) follows the official recipe: LARS (momentum 0.9, η = 1e-3)
with biases and normalisation parameters excluded from weight decay and from the trust ratio,
``lr = base_lr · global_batch / 256``, a linear warmup from 0 and a cosine decay to
``end_lr_ratio · peak``, stepped every iteration. The online probe gets a group of its own (its
own lr, no weight decay, no LARS adaptation) so that adding it leaves the encoder's update as is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from vicreg_lightning.choices import OPTIMIZERS


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You et al., 2017), as in the official VICReg code.

    Weight decay is added to the gradient before the trust ratio ``eta·‖p‖/‖g + wd·p‖``. A
    parameter group with ``lars_adaptation=False`` skips the trust ratio (biases, BN, the probe).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        lars_adaptation: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_adaptation=lars_adaptation
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                dp = p.grad
                if group["weight_decay"] != 0:
                    dp = dp.add(p, alpha=group["weight_decay"])
                if group["lars_adaptation"]:
                    param_norm = torch.norm(p)
                    update_norm = torch.norm(dp)
                    # Kept on the device (no .item()) to avoid a host sync per parameter.
                    trust = torch.where(
                        (param_norm > 0) & (update_norm > 0),
                        group["eta"] * param_norm / update_norm,
                        torch.ones_like(param_norm),
                    )
                    dp = dp.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(dp)
                p.add_(buf, alpha=-group["lr"])
        return loss


def no_weight_decay_names(module: nn.Module) -> set[str]:
    """Parameters that their own model exempts from weight decay by timm's convention: a submodule's
    ``no_weight_decay()`` names (a ViT's position embedding and class token), as full names."""
    names: set[str] = set()
    for prefix, submodule in module.named_modules():
        exempt = getattr(submodule, "no_weight_decay", None)
        if callable(exempt):
            names |= {f"{prefix}.{name}" if prefix else name for name in exempt()}
    return names


def encoder_param_groups(
    module: nn.Module, weight_decay: float, exclude_bias_and_norm: bool
) -> list[dict]:
    """Split parameters into those with weight decay and LARS adaptation and those that the
    official code exempts from both: the 1-D ones (biases, norm weights), and with them the ones
    the model itself names (:func:`no_weight_decay_names`: a ViT's position embedding, class token)."""
    named_exempt = no_weight_decay_names(module) if exclude_bias_and_norm else set()
    regular, exempt = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        (exempt if exclude_bias_and_norm and (p.ndim <= 1 or name in named_exempt) else regular).append(p)
    groups = [{"params": regular, "weight_decay": weight_decay, "lars_adaptation": True}]
    if exempt:
        groups.append({"params": exempt, "weight_decay": 0.0, "lars_adaptation": False})
    return groups


def build_optimizer(
    encoder: nn.Module,
    probe: nn.Module,
    *,
    global_batch_size: int,
    total_steps: int,
    steps_per_epoch: float,
    name: str,
    base_lr: float,
    probe_lr: float,
    weight_decay: float,
    momentum: float,
    eta: float,
    betas: Sequence[float],
    exclude_bias_and_norm: bool,
    warmup_epochs: float,
    end_lr_ratio: float,
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """The optimiser of ``conf/optim`` and its lr schedule, stepped every iteration. The group's keys
    are the keyword arguments, all but ``clip_grad_norm`` (a gradient clip, which
    :class:`~vicreg_lightning.module.VICRegModule` applies).

    One optimiser over the encoder's parameter groups (:func:`encoder_param_groups`) at
    ``lr = base_lr · global_batch_size / 256`` plus the probe's own group at ``probe_lr`` (no weight
    decay, no LARS adaptation), so that adding the probe leaves the encoder's update as it is. The
    encoder's lr warms up linearly over ``warmup_epochs`` and then decays (:func:`warmup_cosine`);
    the probe's decays from the first step: it reads detached features, nothing to warm up."""
    lr = scaled_lr(base_lr, global_batch_size)
    groups = encoder_param_groups(encoder, weight_decay, exclude_bias_and_norm)
    for g in groups:
        g["lr"] = lr
    groups.append(
        {"params": list(probe.parameters()), "lr": probe_lr, "weight_decay": 0.0, "lars_adaptation": False}
    )
    if name == "lars":
        optimizer: torch.optim.Optimizer = LARS(groups, lr=lr, momentum=momentum, eta=eta)
    else:
        # Plain optimisers do not know the LARS flag; drop it so their state dicts stay standard.
        for g in groups:
            g.pop("lars_adaptation")
        if name == "sgd":
            optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum)
        elif name == "adamw":
            optimizer = torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
        else:
            raise ValueError(f"optim.name={name!r}: choose one of {', '.join(OPTIMIZERS)}")
    warmup_steps = round(warmup_epochs * steps_per_epoch)

    def encoder_factor(step: int) -> float:
        return warmup_cosine(step, total_steps, warmup_steps, end_lr_ratio)

    def probe_factor(step: int) -> float:
        return warmup_cosine(step, total_steps, 0, end_lr_ratio)

    factors = [encoder_factor] * (len(optimizer.param_groups) - 1) + [probe_factor]
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, end_lr_ratio: float) -> float:
    """The lr multiplier at ``step``: linear from 0 to 1 over ``warmup_steps``, then cosine from
    1 to ``end_lr_ratio`` at ``total_steps`` (official ``adjust_learning_rate``)."""
    if step < warmup_steps:
        return step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    q = 0.5 * (1 + math.cos(math.pi * min(step - warmup_steps, decay_steps) / decay_steps))
    return q + end_lr_ratio * (1 - q)


def scaled_lr(base_lr: float, global_batch_size: int) -> float:
    """The linear scaling rule of the official code: ``base_lr · batch / 256``."""
    return base_lr * global_batch_size / 256
