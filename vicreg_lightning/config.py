"""The config schema of ``train.py`` and its checks.

Hydra composes ``conf/train.yaml``; :func:`check_config` then merges the result into the typed
schema below (an unknown key or a wrong type fails, naming the key) and checks every value that
could make a run fail later (naming the key and what it should be). It runs before any data is
read or any model is built.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from vicreg_lightning.errors import ConfigError
from vicreg_lightning.loss import WEIGHTINGS
from vicreg_lightning.models import parse_expander_spec, resnet_names
from vicreg_lightning.optim import OPTIMIZERS

DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "stl10", "imagenet", "imagefolder")
# How the two views go through backbone and expander (vicreg_lightning.module.VICRegModule).
VIEWS_FORWARD = ("auto", "separate", "concat")


@dataclass
class ViewConfig:
    """What differs between the two views (official: blur 1.0/0.1, solarize 0.0/0.2)."""

    blur_prob: float = 1.0
    solarize_prob: float = 0.0


@dataclass
class AugmentConfig:
    """Augmentations of both views; official values (BYOL's recipe, ``augmentations.py``)."""

    size: int = 224
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    grayscale_prob: float = 0.2
    blur_sigma: list[float] = field(default_factory=lambda: [0.1, 2.0])
    blur_kernel_size: int = 23
    solarize_threshold: int = 128
    view_a: ViewConfig = field(default_factory=ViewConfig)
    view_b: ViewConfig = field(default_factory=lambda: ViewConfig(blur_prob=0.1, solarize_prob=0.2))
    # Validation images: resize the short side, then centre-crop to ``size``.
    val_resize: int = 256
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    # Make both views on the training device from a batch of stored images (kornia), not in the
    # loader workers; folder data sets first resize and centre-crop to device_source_size.
    on_device: bool = False
    device_source_size: Optional[int] = None


@dataclass
class DataConfig:
    name: str = "digits"
    root: str = "data"
    download: bool = False
    batch_size: int = 256  # global: split over devices and nodes
    num_workers: int = -1  # -1: chosen from the CPU count
    pin_memory: bool = True
    persistent_workers: bool = True
    prefetch_factor: int = 2
    val_fraction: float = 0.2  # digits, and folders without a val split
    split_seed: int = 0
    train_dir: str = "train"  # folder data sets: sub-folders of root
    val_dir: str = "val"
    bad_images: str = "error"  # folder data sets: files that cannot be images; error or skip


@dataclass
class ModelConfig:
    backbone: str = "resnet50"
    small_stem: Optional[bool] = None  # None: chosen from augment.size (models.uses_small_stem)
    zero_init_residual: bool = True
    expander: str = "8192-8192-8192"
    channels_last: Optional[bool] = None  # None: on when CUDA is available
    compile: bool = False
    views_forward: str = "auto"


@dataclass
class LossConfig:
    sim_coeff: float = 25.0
    std_coeff: float = 25.0
    cov_coeff: float = 1.0
    eps: float = 1e-4
    weighting: str = "official"
    gather_distributed: bool = True


@dataclass
class OptimConfig:
    name: str = "lars"
    base_lr: float = 0.2  # lr = base_lr * global batch / 256
    weight_decay: float = 1e-6
    momentum: float = 0.9
    eta: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    exclude_bias_and_norm: bool = True
    warmup_epochs: float = 10.0
    end_lr_ratio: float = 0.001
    probe_lr: float = 0.1


@dataclass
class PathsConfig:
    output_dir: str = "outputs"
    data_dir: str = "data"


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: dict[str, Any] = field(default_factory=dict)
    callbacks: Optional[dict[str, Any]] = field(default_factory=dict)
    logger: Optional[dict[str, Any]] = field(default_factory=dict)
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "train"
    seed: Optional[int] = 0
    ckpt_path: Optional[str] = None
    optimized_metric: str = "val/probe_acc1"


def check_config(cfg: DictConfig) -> DictConfig:
    """The composed config merged into the schema, or a :class:`ConfigError` naming the key."""
    try:
        typed = OmegaConf.merge(OmegaConf.structured(TrainConfig), cfg)
    except ConfigKeyError as e:
        raise ConfigError(f"unknown config key '{e.full_key}'{_valid_keys_hint(e.full_key)}") from None
    except ValidationError as e:
        raise ConfigError(f"{e.full_key}: {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', '') or 'config'}: {str(e).splitlines()[0]}") from None
    _check_values(typed)
    return typed


def check_data_sections(data: Any, augment: Any) -> tuple[DictConfig, DictConfig]:
    """A ``data`` and an ``augment`` section checked as ``train.py`` checks them (for the tools that
    read a training run's data: eval.py, the report). The other sections of the training schema take
    their defaults, with a one-epoch schedule that they fit in."""
    sections = {"data": data, "augment": augment, "trainer": {"max_epochs": 1}, "optim": {"warmup_epochs": 0}}
    checked = check_config(OmegaConf.create(sections))
    return checked.data, checked.augment


def _valid_keys_hint(full_key: str) -> str:
    section, _, _ = full_key.rpartition(".")
    schema = OmegaConf.structured(TrainConfig)
    node = OmegaConf.select(schema, section) if section else schema
    if isinstance(node, DictConfig) and len(node):
        return f"; valid keys in '{section or '<root>'}': {', '.join(node.keys())}"
    return ""


def require_value(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r}: expected {expected}")


def _check_probability(key: str, value: float) -> None:
    require_value(0.0 <= value <= 1.0, key, value, "a probability in [0, 1]")


def _check_interval(key: str, value: list[float], low: float, high: float) -> None:
    bounds = f"{low} <= min <= max <= {high}" if math.isfinite(high) else f"{low} <= min <= max, both finite"
    require_value(
        len(value) == 2 and low <= value[0] <= value[1] <= high and all(math.isfinite(v) for v in value),
        key, list(value), f"[min, max] with {bounds}",
    )


def _check_positive(key: str, value: float, what: str, allow_zero: bool = False) -> None:
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    require_value(ok, key, value, f"a finite {what} {'>=' if allow_zero else '>'} 0")


def _check_values(cfg: DictConfig) -> None:
    data, augment, model, loss, optim = cfg.data, cfg.augment, cfg.model, cfg.loss, cfg.optim
    require_value(data.name in DATASETS, "data.name", data.name, f"one of {', '.join(DATASETS)}")
    require_value(
        data.batch_size >= 2, "data.batch_size", data.batch_size,
        "an integer >= 2 (VICReg's variance and covariance need at least 2 samples per batch)",
    )
    require_value(data.num_workers >= -1, "data.num_workers", data.num_workers, "-1 (auto) or an integer >= 0")
    require_value(data.prefetch_factor >= 1, "data.prefetch_factor", data.prefetch_factor, "an integer >= 1")
    require_value(0.0 < data.val_fraction < 1.0, "data.val_fraction", data.val_fraction, "a fraction in (0, 1)")
    require_value(data.bad_images in ("error", "skip"), "data.bad_images", data.bad_images, "error or skip")

    require_value(augment.size >= 1, "augment.size", augment.size, "a crop size in pixels >= 1")
    require_value(augment.val_resize >= augment.size, "augment.val_resize", augment.val_resize, f"an integer >= augment.size ({augment.size})")
    _check_interval("augment.crop_scale", augment.crop_scale, 1e-6, 1.0)
    _check_interval("augment.crop_ratio", augment.crop_ratio, 1e-6, float("inf"))
    _check_interval("augment.blur_sigma", augment.blur_sigma, 1e-6, float("inf"))
    require_value(
        augment.blur_kernel_size >= 1 and augment.blur_kernel_size % 2 == 1,
        "augment.blur_kernel_size", augment.blur_kernel_size, "an odd integer >= 1",
    )
    for key in ("hflip_prob", "jitter_prob", "grayscale_prob", "view_a.blur_prob", "view_a.solarize_prob",
                "view_b.blur_prob", "view_b.solarize_prob"):
        _check_probability(f"augment.{key}", OmegaConf.select(augment, key))
    for key in ("brightness", "contrast", "saturation"):
        require_value(augment[key] >= 0, f"augment.{key}", augment[key], "a jitter strength >= 0")
    require_value(0.0 <= augment.hue <= 0.5, "augment.hue", augment.hue, "a hue jitter in [0, 0.5]")
    require_value(0 <= augment.solarize_threshold <= 256, "augment.solarize_threshold", augment.solarize_threshold, "an integer in [0, 256]")
    require_value(len(augment.mean) == 3 and len(augment.std) == 3 and all(s > 0 for s in augment.std),
             "augment.std", list(augment.std), "3 positive per-channel values (with 3 in augment.mean)")

    names = resnet_names()
    require_value(model.backbone in names, "model.backbone", model.backbone, f"a torchvision ResNet: {', '.join(names)}")
    parse_expander_spec(model.expander)
    require_value(model.views_forward in VIEWS_FORWARD, "model.views_forward", model.views_forward,
                  f"one of {', '.join(VIEWS_FORWARD)}")
    require_value(augment.device_source_size is None or augment.device_source_size >= augment.size,
                  "augment.device_source_size", augment.device_source_size,
                  f"null or an integer >= augment.size ({augment.size})")

    for key in ("sim_coeff", "std_coeff", "cov_coeff"):
        _check_positive(f"loss.{key}", loss[key], "coefficient", allow_zero=True)
    require_value(loss.sim_coeff + loss.std_coeff + loss.cov_coeff > 0, "loss.sim_coeff", loss.sim_coeff,
             "at least one of loss.sim_coeff/std_coeff/cov_coeff > 0")
    _check_positive("loss.eps", loss.eps, "number")
    require_value(loss.weighting in WEIGHTINGS, "loss.weighting", loss.weighting, f"one of {', '.join(WEIGHTINGS)}")

    require_value(optim.name in OPTIMIZERS, "optim.name", optim.name, f"one of {', '.join(OPTIMIZERS)}")
    _check_positive("optim.base_lr", optim.base_lr, "learning rate")
    _check_positive("optim.probe_lr", optim.probe_lr, "learning rate")
    _check_positive("optim.weight_decay", optim.weight_decay, "number", allow_zero=True)
    require_value(0 <= optim.momentum < 1, "optim.momentum", optim.momentum, "a number in [0, 1)")
    require_value(optim.warmup_epochs >= 0, "optim.warmup_epochs", optim.warmup_epochs, "a number of epochs >= 0")
    require_value(0 <= optim.end_lr_ratio <= 1, "optim.end_lr_ratio", optim.end_lr_ratio, "a fraction of the peak lr in [0, 1]")

    max_epochs = cfg.trainer.get("max_epochs")
    require_value(
        isinstance(max_epochs, int) and not isinstance(max_epochs, bool) and max_epochs >= 1,
        "trainer.max_epochs", max_epochs, "an integer >= 1",
    )
    # Longer than the run, the warmup would end the run before the lr reaches its peak.
    require_value(optim.warmup_epochs <= max_epochs, "optim.warmup_epochs", optim.warmup_epochs,
                  f"at most trainer.max_epochs ({max_epochs}) epochs; lower it for a short run")
    # What numpy, Python and torch accept as a seed alike (Lightning replaces any other by 0).
    require_value(cfg.seed is None or 0 <= cfg.seed <= 2**32 - 1, "seed", cfg.seed, "null or an integer in [0, 2**32 - 1]")


def check_trainer_arguments(trainer: DictConfig) -> None:
    """Every ``trainer.*`` key must be a ``lightning.pytorch.Trainer`` argument. (Separate from
    :func:`check_config`: it imports Lightning, which takes seconds.)"""
    from lightning.pytorch import Trainer

    accepted = set(inspect.signature(Trainer.__init__).parameters) - {"self", "callbacks", "logger"}
    for key in trainer:
        require_value(key in accepted, f"trainer.{key}", trainer[key], "a lightning.pytorch.Trainer argument")


def instantiate_entry(spec: Any, where: str) -> Any:
    """``hydra.utils.instantiate`` for one ``callbacks.<name>`` / ``logger.<name>`` entry: a
    constructor that fails is a config error naming the entry."""
    from hydra.utils import instantiate

    try:
        return instantiate(spec)
    except Exception as e:  # noqa: BLE001 - any constructor error is a config error here
        raise ConfigError(f"{where}: cannot instantiate {spec.get('_target_')}: {e}") from None
