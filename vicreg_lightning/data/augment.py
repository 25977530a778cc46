"""The two-view augmentation of VICReg, on uint8 images.

Both views share crop, flip, colour jitter and grayscale; they differ in blur and solarisation
(official, BYOL's recipe: view a blur 1.0 / solarize 0.0, view b blur 0.1 / solarize 0.2).

Two implementations of one recipe, with the same random draws per sample and per view:

- :class:`ViewAugment`, in the loader workers (the default): OpenCV's uint8 kernels on one image
  at a time. OpenCV rather than torchvision's tensor ops or Pillow because its SIMD uint8 kernels
  (resize, lookup tables, separable blur, colour conversion) make a two-view sample ~3x cheaper
  than the official Pillow pipeline (``benchmarks/bench_data.py``); torchvision's tensor colour
  jitter and 23-tap blur run in float and are slower than Pillow.
- :class:`BatchViewAugment`, on the training device (``augment.on_device=true``): kornia on a whole
  uint8 batch, with per-sample random parameters. Kornia rather than ``torchvision.transforms.v2``
  because v2 applied to a batch tensor draws one set of parameters for the whole batch.

Images stay uint8 (about 4x less to copy, pin and transfer than float32) until
:func:`normalize`, which runs on the training device.
"""

from __future__ import annotations

import math
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torchvision.transforms import v2

# The loader workers are the parallelism: OpenCV's own thread pool would oversubscribe the CPUs.
cv2.setNumThreads(1)


def view_generator(seed: int, epoch: int, index: int, view: int) -> torch.Generator:
    """The random stream of one view of one sample in one epoch: a generator seeded by a hash of
    the four numbers (NumPy's ``SeedSequence``), so that the draws depend on nothing else: not on
    the loader worker, the number of workers or devices, nor where a run was interrupted."""
    state = np.random.SeedSequence([seed, epoch, index, view]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return float(torch.empty(()).uniform_(low, high, generator=generator))


def _chance(prob: float, generator: torch.Generator | None) -> bool:
    # Drawn even when prob is 0 or 1, so that every sample consumes the same random stream.
    return bool(torch.rand((), generator=generator) < prob)


def crop_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
             generator: torch.Generator | None = None) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a random crop of ``scale`` × the area and aspect ``ratio``:
    torchvision's ``RandomResizedCrop`` draw, the same random numbers in the same order (ten
    tries, then the central crop clamped to ``ratio``). ``generator`` None: torch's global one."""
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=generator).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=generator).item())
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _lut(values: np.ndarray) -> np.ndarray:
    return np.clip(values, 0, 255).astype(np.uint8)


_IDENTITY = np.arange(256, dtype=np.float64)


def _gray(image: np.ndarray) -> np.ndarray:
    # ITU-R 601 luma (0.299, 0.587, 0.114), as torchvision's rgb_to_grayscale.
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)


def _color_jitter(image: np.ndarray, jitter: tuple[float, float, float, float], generator: torch.Generator | None
                  ) -> np.ndarray:
    """torchvision's ``ColorJitter``: each of the four adjustments with a uniform factor, in a random
    order; an adjustment configured as 0 is skipped, as there."""
    brightness, contrast, saturation, hue = jitter
    steps = torch.randperm(4, generator=generator).tolist()
    for step in steps:
        if step == 0 and brightness > 0:
            factor = _uniform(max(0.0, 1 - brightness), 1 + brightness, generator)
            image = cv2.LUT(image, _lut(_IDENTITY * factor))
        elif step == 1 and contrast > 0:
            factor = _uniform(max(0.0, 1 - contrast), 1 + contrast, generator)
            mean = float(_gray(image).mean())
            image = cv2.LUT(image, _lut(factor * _IDENTITY + (1 - factor) * mean))
        elif step == 2 and saturation > 0:
            factor = _uniform(max(0.0, 1 - saturation), 1 + saturation, generator)
            gray = cv2.cvtColor(_gray(image), cv2.COLOR_GRAY2RGB)
            image = cv2.addWeighted(image, factor, gray, 1 - factor, 0)
        elif step == 3 and hue > 0:
            shift = _uniform(-hue, hue, generator)
            # OpenCV's *_FULL hue spans the whole uint8 range, so a shift is an addition modulo 256.
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV_FULL)
            hsv[..., 0] += np.uint8(round(shift * 256) % 256)
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)
    return image


class ViewAugment:
    """One view of the recipe on one uint8 image: ``(3, H, W)`` tensor -> ``(3, size, size)`` uint8.

    Crop-resize (area filter when shrinking, bicubic when enlarging), horizontal flip, colour
    jitter, grayscale, Gaussian blur (``blur_kernel_size`` taps, reflected border, as torchvision's),
    solarisation, with torchvision's parameter distributions; ``view`` gives the blur and
    solarisation probabilities; ``local``: a multi-crop local view (``augment.local_size``,
    ``augment.local_crop_scale``). The result's memory is channels-last (``H, W, C``), as OpenCV
    writes it.
    """

    def __init__(self, aug: Any, view: Any, local: bool = False) -> None:
        # A local crop (multi-crop) is smaller and cut from a smaller share of the image.
        self.size = int(aug.local_size if local else aug.size)
        self.scale, self.ratio = tuple(aug.local_crop_scale if local else aug.crop_scale), tuple(aug.crop_ratio)
        self.hflip_prob, self.jitter_prob, self.grayscale_prob = aug.hflip_prob, aug.jitter_prob, aug.grayscale_prob
        self.jitter = (aug.brightness, aug.contrast, aug.saturation, aug.hue)
        self.blur_sigma, self.blur_kernel_size = tuple(aug.blur_sigma), int(aug.blur_kernel_size)
        self.blur_prob, self.solarize_prob = view.blur_prob, view.solarize_prob
        threshold = aug.solarize_threshold
        self.solarize_lut = _lut(np.where(_IDENTITY >= threshold, 255 - _IDENTITY, _IDENTITY))

    def __call__(self, image: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``generator``: the view's random stream (:func:`view_generator`); None: torch's global one."""
        pixels = image.permute(1, 2, 0).numpy()
        top, left, h, w = crop_box(pixels.shape[0], pixels.shape[1], self.scale, self.ratio, generator)
        shrink = h * w > self.size * self.size
        out = cv2.resize(
            np.ascontiguousarray(pixels[top:top + h, left:left + w]), (self.size, self.size),
            interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC,
        )
        if _chance(self.hflip_prob, generator):
            out = cv2.flip(out, 1)
        if _chance(self.jitter_prob, generator):
            out = _color_jitter(out, self.jitter, generator)
        if _chance(self.grayscale_prob, generator):
            out = cv2.cvtColor(_gray(out), cv2.COLOR_GRAY2RGB)
        if _chance(self.blur_prob, generator):
            sigma = _uniform(*self.blur_sigma, generator)
            k = self.blur_kernel_size
            out = cv2.GaussianBlur(out, (k, k), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
        if _chance(self.solarize_prob, generator):
            out = cv2.LUT(out, self.solarize_lut)
        return torch.from_numpy(out).permute(2, 0, 1)


class Views:
    """Every view of one decoded image, uint8: ``(image, epoch, index) -> (view_a, view_b, *local)``,
    the two views of the recipe and ``augment.num_local_crops`` local crops, each drawn from its own
    :func:`view_generator` of ``(seed, epoch, index, view)``."""

    def __init__(self, aug: Any, seed: int) -> None:
        self.views = [ViewAugment(aug, aug.view_a), ViewAugment(aug, aug.view_b),
                      *(ViewAugment(aug, aug.view_local, local=True) for _ in range(aug.num_local_crops))]
        self.seed = seed

    def __call__(self, image: Tensor, epoch: int, index: int) -> tuple[Tensor, ...]:
        return tuple(view(image, view_generator(self.seed, epoch, index, number))
                     for number, view in enumerate(self.views))


def _to_float(aug: Any) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(aug.mean), std=list(aug.std))]


def view_transform(aug: Any, view: Any) -> v2.Compose:
    """One view, normalised float32: for the tools that feed a model image by image (the report's
    invariance audit, the augmented linear evaluation)."""
    return v2.Compose([ViewAugment(aug, view), *_to_float(aug)])


def eval_resize(aug: Any) -> v2.Compose:
    """Validation images as stored (uint8): resize the short side to ``val_resize``, centre-crop ``size``."""
    return v2.Compose([
        v2.Resize(aug.val_resize, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
        v2.CenterCrop(aug.size),
    ])


def eval_transform(aug: Any) -> v2.Compose:
    """Validation images, normalised float32: :func:`eval_resize`, then scaled and normalised. (Off
    the hot path, so normalised in the workers, where every tool can use it.)"""
    return v2.Compose([eval_resize(aug), *_to_float(aug)])


def same_size(aug: Any) -> v2.Transform:
    """What the loader does to a stored image when the views are made on the device: nothing when
    the images are already one size (in-memory data sets, ``augment.device_source_size`` null), else
    resize the short side and centre-crop to ``device_source_size`` so that they batch."""
    size = aug.device_source_size
    if size is None:
        return v2.Identity()
    return v2.Compose([v2.Resize(size, interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                       v2.CenterCrop(size)])


class SameSize:
    """:func:`same_size` as a training transform, ``(image, epoch, index) -> image``: the loader
    draws nothing when the views are made on the device."""

    def __init__(self, aug: Any) -> None:
        self.transform = same_size(aug)

    def __call__(self, image: Tensor, epoch: int, index: int) -> Tensor:
        return self.transform(image)


class Normalize(nn.Module):
    """uint8 ``(N, 3, H, W)`` -> float32 ``(x / 255 - mean) / std`` as one fused multiply-add, on
    the device; the memory format (channels-last or not) is kept."""

    def __init__(self, mean: list[float], std: list[float]) -> None:
        super().__init__()
        mean_t, std_t = torch.tensor(list(mean)), torch.tensor(list(std))
        self.register_buffer("scale", (1.0 / (255.0 * std_t)).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", (-mean_t / std_t).view(1, -1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return torch.addcmul(self.shift, images.float(), self.scale)


class BatchViewAugment(nn.Module):
    """One view of the recipe (or a local crop) on a whole uint8 batch on its device (kornia), every
    sample with its own random parameters and the probabilities of the CPU path; returns normalised
    float32.

    The crop is bicubic (kornia's ``RandomResizedCrop`` draws torchvision's distribution);
    colour jitter is kornia's ``ColorJitter``, torchvision's formulas in a random order per call.
    """

    def __init__(self, aug: Any, view: Any, local: bool = False) -> None:
        super().__init__()
        import kornia.augmentation as K

        threshold = aug.solarize_threshold / 255.0
        size, scale = (aug.local_size, aug.local_crop_scale) if local else (aug.size, aug.crop_scale)
        self.augment = nn.Sequential(
            K.RandomResizedCrop((size, size), scale=tuple(scale), ratio=tuple(aug.crop_ratio),
                                resample="BICUBIC", align_corners=False),
            K.RandomHorizontalFlip(p=aug.hflip_prob),
            K.ColorJitter(aug.brightness, aug.contrast, aug.saturation, aug.hue, p=aug.jitter_prob),
            K.RandomGrayscale(p=aug.grayscale_prob),
            K.RandomGaussianBlur(aug.blur_kernel_size, tuple(aug.blur_sigma), border_type="reflect",
                                 p=view.blur_prob),
            # A (low, high) pair is the range of kornia's threshold draw: fixed at the recipe's.
            K.RandomSolarize(thresholds=(threshold, threshold), additions=0.0, p=view.solarize_prob),
        )
        # kornia works on [0, 1] floats, 1/255 of the uint8 scale that Normalize takes.
        self.normalize = Normalize([m / 255.0 for m in aug.mean], [s / 255.0 for s in aug.std])

    def forward(self, images: Tensor) -> Tensor:
        return self.normalize(self.augment(images.float() / 255.0).clamp_(0.0, 1.0))


def device_views(aug: Any) -> nn.ModuleList:
    """:class:`BatchViewAugment` for each view :class:`Views` makes, in the same order."""
    return nn.ModuleList([BatchViewAugment(aug, aug.view_a), BatchViewAugment(aug, aug.view_b),
                          *(BatchViewAugment(aug, aug.view_local, local=True) for _ in range(aug.num_local_crops))])
