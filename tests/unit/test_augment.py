"""The two-view recipe, in the loader workers (OpenCV) and on the device (kornia): torchvision's crop
draw, each family applied with its configured probability, drawn independently per sample and per
view, and the official asymmetry between the views."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision.transforms as T
from omegaconf import OmegaConf

from tests.fake_data import write_image_folder
from tests.runs import configs
from vicreg_lightning.config import preset
from vicreg_lightning.data.augment import BatchViewAugment, Normalize, ViewAugment, crop_box
from vicreg_lightning.data.datamodule import VICRegDataModule
from vicreg_lightning.errors import ConfigError


SIZE = 16
SAMPLES = 600
PROB = 0.3


def official(**changes) -> OmegaConf:
    """The official recipe (``augment=official``) at ``SIZE`` px, with ``changes``."""
    return OmegaConf.create({**preset("augment", "official"), "size": SIZE, "val_resize": SIZE,
                             "blur_kernel_size": 5, **changes})


def only(family: str, prob: float = PROB) -> tuple[OmegaConf, OmegaConf]:
    """A recipe with every family off but ``family``, and a crop that keeps the whole image."""
    aug = official(
        crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0], hflip_prob=0.0, jitter_prob=0.0, grayscale_prob=0.0,
        view_a={"blur_prob": 0.0, "solarize_prob": 0.0}, view_b={"blur_prob": 0.0, "solarize_prob": 0.0},
        # The same normalisation for every channel: a grey image stays grey.
        mean=[0.5, 0.5, 0.5], std=[0.25, 0.25, 0.25],
        # A blur of sigma < 0.3 leaves uint8 noise unchanged: keep every blur visible.
        blur_sigma=[1.0, 2.0],
    )
    if family in ("blur", "solarize"):
        aug.view_a[f"{family}_prob"] = prob
    else:
        aug[{"flip": "hflip_prob", "jitter": "jitter_prob", "grayscale": "grayscale_prob"}[family]] = prob
    return aug, aug.view_a


def images(count: int, seed: int = 0) -> torch.Tensor:
    """Noise with distinct channels, no mirror symmetry, values on both sides of the solarisation
    threshold: every family visibly changes it."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, SIZE, SIZE), dtype=torch.uint8, generator=generator)


def applied(family: str, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Per sample, whether ``family`` changed ``before`` (both float, same scale) into ``after``."""
    def close(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return ((x - y).abs() <= 1e-3 * (1 + y.abs())).flatten(1).all(dim=1)

    if family == "flip":
        return close(after, before.flip(-1))
    if family == "grayscale":
        return close(after[:, 0], after[:, 1]) & close(after[:, 1], after[:, 2])
    return ~close(after, before)


def worker_views(aug, view, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    augment = ViewAugment(aug, view)
    return batch.float(), torch.stack([augment(image) for image in batch]).float()


def device_views(aug, view, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # On CPU tensors here; the same code runs on the GPU. Compare before normalisation's scale.
    normalize = Normalize(aug.mean, aug.std)
    return normalize(batch), BatchViewAugment(aug, view)(batch)


IMPLEMENTATIONS = {"workers": worker_views, "device": device_views}


def binomial_bounds(prob: float, count: int, sigmas: float = 4.5) -> tuple[float, float]:
    spread = sigmas * math.sqrt(prob * (1 - prob) / count)
    return prob - spread, prob + spread


@pytest.mark.parametrize("where", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", ["flip", "jitter", "grayscale", "blur", "solarize"])
def test_each_family_is_applied_with_its_probability_per_sample(where, family):
    torch.manual_seed(0)
    aug, view = only(family)
    before, after = IMPLEMENTATIONS[where](aug, view, images(SAMPLES))
    rate = applied(family, before, after).float().mean().item()
    low, high = binomial_bounds(PROB, SAMPLES)
    # One draw for the whole batch would give a rate of 0 or 1.
    assert low <= rate <= high, f"{where}: {family} applied to {rate:.3f} of the samples, configured {PROB}"


@pytest.mark.parametrize("where", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", ["flip", "grayscale", "solarize"])
def test_probability_zero_and_one_are_exact(where, family):
    torch.manual_seed(0)
    for prob in (0.0, 1.0):
        aug, view = only(family, prob)
        before, after = IMPLEMENTATIONS[where](aug, view, images(64))
        assert applied(family, before, after).float().mean().item() == prob


@pytest.mark.parametrize("where", IMPLEMENTATIONS)
def test_the_two_views_draw_independently(where):
    """Flip decisions of view a and view b of the same samples: P(both) = p², not p."""
    torch.manual_seed(0)
    aug, view = only("flip", 0.5)
    batch = images(SAMPLES)
    before, first = IMPLEMENTATIONS[where](aug, view, batch)
    _, second = IMPLEMENTATIONS[where](aug, view, batch)
    both = (applied("flip", before, first) & applied("flip", before, second)).float().mean().item()
    low, high = binomial_bounds(0.25, SAMPLES)
    assert low <= both <= high


@pytest.mark.parametrize("where", IMPLEMENTATIONS)
def test_crops_differ_per_sample_of_one_image(where):
    torch.manual_seed(0)
    aug = official()
    batch = images(1).expand(32, -1, -1, -1).contiguous()
    _, views = IMPLEMENTATIONS[where](aug, aug.view_a, batch)
    distinct = {tuple(v.flatten()[:64].tolist()) for v in views}
    assert len(distinct) == 32
    assert views.shape == (32, 3, SIZE, SIZE)


def test_crop_draw_is_torchvisions():
    """Same seed, same crop box as torchvision's RandomResizedCrop, fallback included."""
    for seed in range(300):
        for scale, ratio in (((0.08, 1.0), (3 / 4, 4 / 3)), ((0.9, 1.0), (3.0, 4.0))):
            torch.manual_seed(seed)
            ours = crop_box(37, 53, scale, ratio)
            torch.manual_seed(seed)
            reference = T.RandomResizedCrop.get_params(torch.empty(3, 37, 53), scale, list(ratio))
            assert ours == tuple(reference)


def test_official_asymmetry_between_the_views():
    """View a: always blurred, never solarised; view b: blurred 10%, solarised 20% of the time."""
    torch.manual_seed(0)
    aug = official()
    batch = images(SAMPLES)
    for family, view, expected in (("blur", "view_a", 1.0), ("solarize", "view_a", 0.0),
                                   ("blur", "view_b", 0.1), ("solarize", "view_b", 0.2)):
        single, _ = only(family, aug[view][f"{family}_prob"])
        before, after = worker_views(single, single.view_a, batch)
        rate = applied(family, before, after).float().mean().item()
        low, high = binomial_bounds(expected, SAMPLES) if 0 < expected < 1 else (expected, expected)
        assert low <= rate <= high, (family, view, rate)


def test_views_made_on_the_device_from_the_datamodule(tmp_path):
    data, aug = configs("imagefolder", str(tmp_path), batch_size=4)
    write_image_folder(tmp_path / "train", classes=2, per_class=4, size=24)
    write_image_folder(tmp_path / "val", classes=2, per_class=2, size=24)
    aug.on_device = True
    dm = VICRegDataModule(data, aug)
    with pytest.raises(ConfigError, match="augment.device_source_size"):
        dm.setup("fit")
    aug.device_source_size = 18
    dm = VICRegDataModule(data, aug)
    dm.setup("fit")
    images_, labels = next(iter(dm.train_dataloader()))
    assert images_.dtype == torch.uint8 and images_.shape == (4, 3, 18, 18)
    (view_a, view_b), same_labels = dm.on_after_batch_transfer((images_, labels), 0)
    assert view_a.shape == view_b.shape == (4, 3, SIZE, SIZE) and view_a.dtype == torch.float32
    assert torch.equal(labels, same_labels)
    assert all(not torch.equal(a, b) for a, b in zip(view_a, view_b, strict=True))
