"""VICReg in plain PyTorch, top to bottom: no Hydra, no Lightning, the library's parts alone.

Two views of each image (the recipe of ``conf/augment/digits.yaml``) go through one encoder, a
backbone and the expander; the VICReg loss keeps the two embeddings close (invariance), every
dimension's std above 1 (variance) and the dimensions decorrelated (covariance); LARS, with the
official warmup and cosine schedule, updates the encoder. The data: scikit-learn's 1,797 digits.
The settings are the shipped presets (``vicreg_lightning/conf``), read as plain YAML.

    python examples/minimal_vicreg.py --steps 200
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn

import vicreg_lightning
from vicreg_lightning.backbones import build_backbone
from vicreg_lightning.data.augment import view_transform
from vicreg_lightning.data.datasets import digits
from vicreg_lightning.expander import build_expander
from vicreg_lightning.loss import VICRegLoss
from vicreg_lightning.optim import LARS, encoder_param_groups, scaled_lr, warmup_cosine

CONF = Path(vicreg_lightning.__file__).parent / "conf"


def preset(group: str, *names: str) -> Any:
    """``conf/<group>/<name>.yaml`` files merged in order, as their ``defaults`` lists chain them."""
    return OmegaConf.merge(*(OmegaConf.load(CONF / group / f"{name}.yaml") for name in names))


AUGMENT, MODEL = preset("augment", "official", "digits"), preset("model", "digits")
LOSS, OPTIM = preset("loss", "vicreg"), preset("optim", "lars", "digits")


def build(batch_size: int) -> tuple[nn.Module, VICRegLoss, LARS]:
    """The encoder (backbone, then expander), the loss and the optimiser at the batch's lr."""
    backbone = build_backbone(MODEL, AUGMENT.size)
    encoder = nn.Sequential(backbone.module, build_expander(backbone.feature_dim, MODEL.expander))
    criterion = VICRegLoss(sim_coeff=LOSS.sim_coeff, std_coeff=LOSS.std_coeff, cov_coeff=LOSS.cov_coeff)
    # Biases and norm weights get neither weight decay nor LARS's trust ratio (official code).
    groups = encoder_param_groups(encoder, OPTIM.weight_decay, OPTIM.exclude_bias_and_norm)
    optimizer = LARS(groups, lr=scaled_lr(OPTIM.base_lr, batch_size), momentum=OPTIM.momentum, eta=OPTIM.eta)
    return encoder, criterion, optimizer


def two_views(images: Tensor) -> tuple[Tensor, Tensor]:
    """Each uint8 image twice, augmented independently: same crop and jitter ranges, different blur."""
    view_a, view_b = view_transform(AUGMENT, AUGMENT.view_a), view_transform(AUGMENT, AUGMENT.view_b)
    return torch.stack([view_a(x) for x in images]), torch.stack([view_b(x) for x in images])


def train_step(encoder: nn.Module, criterion: VICRegLoss, optimizer: LARS, x_a: Tensor, x_b: Tensor) -> float:
    """One update: both views through the encoder (two passes: BatchNorm's statistics per view)."""
    loss = criterion(encoder(x_a), encoder(x_b)).loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.item()


def main(steps: int = 200, batch_size: int = 256, seed: int = 0) -> list[float]:
    """Pretrain for ``steps`` steps; the loss of each step."""
    torch.manual_seed(seed)
    train_set, _, _ = digits(preset("data", "digits"))
    encoder, criterion, optimizer = build(batch_size)
    peak = [group["lr"] for group in optimizer.param_groups]
    steps_per_epoch = len(train_set) // batch_size
    losses = []
    for step in range(steps):
        for group, lr in zip(optimizer.param_groups, peak, strict=True):  # warmup, then cosine decay
            group["lr"] = lr * warmup_cosine(step, steps, round(OPTIM.warmup_epochs * steps_per_epoch),
                                              OPTIM.end_lr_ratio)
        batch = torch.randperm(len(train_set))[:batch_size]
        losses.append(train_step(encoder, criterion, optimizer, *two_views(train_set.images[batch])))
        if step % 20 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {losses[-1]:.3f}")
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per step (default: %(default)s)")
    args = parser.parse_args()
    main(args.steps, args.batch_size)
