"""The two-view augmentation of VICReg on uint8 image tensors (``torchvision.transforms.v2``).

Both views share crop, flip, colour jitter and grayscale; they differ in blur and solarisation
(official, BYOL's recipe: view a blur 1.0 / solarize 0.0, view b blur 0.1 / solarize 0.2). Images
stay uint8 until the last step, where they become normalised float32.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2


def _normalize(aug: Any) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(aug.mean), std=list(aug.std))]


def view_transform(aug: Any, view: Any) -> v2.Compose:
    """One view's pipeline from an ``augment`` config and its ``view_a``/``view_b`` section."""
    jitter = v2.ColorJitter(
        brightness=aug.brightness, contrast=aug.contrast, saturation=aug.saturation, hue=aug.hue
    )
    blur = v2.GaussianBlur(kernel_size=aug.blur_kernel_size, sigma=tuple(aug.blur_sigma))
    return v2.Compose(
        [
            v2.RandomResizedCrop(
                aug.size,
                scale=tuple(aug.crop_scale),
                ratio=tuple(aug.crop_ratio),
                interpolation=v2.InterpolationMode.BICUBIC,
                antialias=True,
            ),
            v2.RandomHorizontalFlip(p=aug.hflip_prob),
            v2.RandomApply([jitter], p=aug.jitter_prob),
            v2.RandomGrayscale(p=aug.grayscale_prob),
            v2.RandomApply([blur], p=view.blur_prob),
            v2.RandomSolarize(threshold=aug.solarize_threshold, p=view.solarize_prob),
            *_normalize(aug),
        ]
    )


def eval_transform(aug: Any) -> v2.Compose:
    """Validation images: resize the short side to ``val_resize``, centre-crop ``size``."""
    return v2.Compose(
        [
            v2.Resize(aug.val_resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.CenterCrop(aug.size),
            *_normalize(aug),
        ]
    )


class TwoViews:
    """Both views of one decoded image: ``image -> (view_a, view_b)``."""

    def __init__(self, aug: Any) -> None:
        self.view_a = view_transform(aug, aug.view_a)
        self.view_b = view_transform(aug, aug.view_b)

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.view_a(image), self.view_b(image)
