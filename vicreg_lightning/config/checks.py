"""The config's checks: the composed config merged into its schema (:mod:`.schema`), then every
section's values, naming the key and what it should be. They change nothing, and run before any
data is read or torch is imported (the names a value is checked against: :mod:`vicreg_lightning.choices`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from vicreg_lightning.choices import OPTIMIZERS, POOLS, VIEWS_FORWARD, WEIGHTINGS, backbone_kind, parse_expander_spec
from vicreg_lightning.config.schema import SCHEMAS, TrainConfig
from vicreg_lightning.data.catalog import DATASETS
from vicreg_lightning.errors import ConfigError


def merge_into(schema: type, cfg: Any, prefix: str = "") -> DictConfig:
    """``cfg`` merged into ``schema``: an unknown key or a wrong type is a :class:`ConfigError`
    naming the key; so is a key left without a value (``???``)."""
    if OmegaConf.is_config(cfg):
        # As plain values: a node typed as Hydra composed it would take keys added with +key=value.
        cfg = OmegaConf.create(OmegaConf.to_container(cfg))
    try:
        typed = OmegaConf.merge(OmegaConf.structured(schema), cfg)
    except ConfigKeyError as e:
        key = _full_key(prefix, e.full_key)
        raise ConfigError(f"unknown config key '{key}'{_valid_keys_hint(schema, e.full_key, prefix)}") from None
    except ValidationError as e:
        raise ConfigError(f"{_full_key(prefix, e.full_key)}: {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        key = _full_key(prefix, getattr(e, "full_key", "") or "") or "config"
        raise ConfigError(f"{key}: {str(e).splitlines()[0]}") from None
    missing = sorted(OmegaConf.missing_keys(typed))
    if missing:
        key = _full_key(prefix, missing[0])
        raise ConfigError(f"{key}: no value (???); set {key}=<value>, or choose a preset that sets it")
    return typed


def _full_key(prefix: str, key: str) -> str:
    return ".".join(part for part in (prefix, key) if part)


def _valid_keys_hint(schema: type, full_key: str, prefix: str) -> str:
    section, _, _ = full_key.rpartition(".")
    node: Any = schema
    for part in section.split(".") if section else []:
        node = typing.get_type_hints(node).get(part) if dataclasses.is_dataclass(node) else None
    if dataclasses.is_dataclass(node):
        keys = ", ".join(f.name for f in dataclasses.fields(node))
        return f"; valid keys in '{_full_key(prefix, section) or '<root>'}': {keys}"
    return ""


def check_config(cfg: DictConfig) -> DictConfig:
    """The composed config merged into :class:`TrainConfig` and checked, or a :class:`ConfigError`
    naming the key."""
    typed = merge_into(TrainConfig, cfg)
    for name, check in CHECKS.items():
        check(typed[name])
    _check_schedule(typed.optim, typed.trainer)
    # What numpy, Python and torch accept as a seed alike (Lightning replaces any other by 0).
    require_value(typed.seed is None or 0 <= typed.seed <= 2**32 - 1, "seed", typed.seed,
                  "null or an integer in [0, 2**32 - 1]")
    return typed


def check_recipe(choices: dict[str, Any]) -> None:
    """The default recipe, ``experiment=digits``, is sized for the digits: with another data set
    (``data=cifar10`` alone) it would train ResNet-10 for 20 epochs at the digits' lr without a
    word. ``choices``: Hydra's group choices (``hydra.runtime.choices``)."""
    data, experiment = choices.get("data"), str(choices.get("experiment"))
    if experiment.startswith("digits") and data != "digits":
        raise ConfigError(
            f"data={data} under experiment={experiment} (a recipe sized for the digits); choose a recipe "
            f"for it (experiment=cifar10_resnet18, experiment=imagenet_resnet50), or drop the default one with "
            f"'~experiment' and take the groups' own presets (model, optim, trainer)"
        )


def check_sections(**sections: Any) -> tuple[DictConfig, ...]:
    """Each ``<group>=<section>`` merged into its group's schema and its values checked, as
    ``train.py`` checks them (for the tools that read a training run's ``data`` and ``augment``)."""
    checked = []
    for name, section in sections.items():
        typed = merge_into(SCHEMAS[name], section, prefix=name)
        CHECKS[name](typed)
        checked.append(typed)
    return tuple(checked)


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


def _check_data(data: DictConfig) -> None:
    require_value(data.name in DATASETS, "data.name", data.name, f"one of {', '.join(DATASETS)}")
    require_value(data.batch_size >= 2, "data.batch_size", data.batch_size,
                  "an integer >= 2 (VICReg's variance and covariance need at least 2 samples per batch)")
    require_value(data.micro_batch_size is None or data.micro_batch_size >= 1, "data.micro_batch_size",
                  data.micro_batch_size, "null (one pass) or a divisor >= 1 of the per-device batch")
    require_value(data.num_workers >= -1, "data.num_workers", data.num_workers, "-1 (auto) or an integer >= 0")
    require_value(data.prefetch_factor >= 1, "data.prefetch_factor", data.prefetch_factor, "an integer >= 1")
    require_value(0.0 < data.val_fraction < 1.0, "data.val_fraction", data.val_fraction, "a fraction in (0, 1)")
    require_value(data.bad_images in ("error", "skip"), "data.bad_images", data.bad_images, "error or skip")
    require_value(data.access in ("indexed", "stream"), "data.access", data.access, "indexed or stream")


def _check_augment(augment: DictConfig) -> None:
    require_value(augment.size >= 1, "augment.size", augment.size, "a crop size in pixels >= 1")
    require_value(augment.val_resize >= augment.size, "augment.val_resize", augment.val_resize,
                  f"an integer >= augment.size ({augment.size})")
    _check_interval("augment.crop_scale", augment.crop_scale, 1e-6, 1.0)
    _check_interval("augment.crop_ratio", augment.crop_ratio, 1e-6, float("inf"))
    _check_interval("augment.blur_sigma", augment.blur_sigma, 1e-6, float("inf"))
    require_value(augment.blur_kernel_size >= 1 and augment.blur_kernel_size % 2 == 1,
                  "augment.blur_kernel_size", augment.blur_kernel_size, "an odd integer >= 1")
    for key in ("hflip_prob", "jitter_prob", "grayscale_prob", "view_a.blur_prob", "view_a.solarize_prob",
                "view_b.blur_prob", "view_b.solarize_prob"):
        _check_probability(f"augment.{key}", OmegaConf.select(augment, key))
    for key in ("brightness", "contrast", "saturation"):
        _check_positive(f"augment.{key}", augment[key], "jitter strength", allow_zero=True)
    require_value(0.0 <= augment.hue <= 0.5, "augment.hue", augment.hue, "a hue jitter in [0, 0.5]")
    require_value(0 <= augment.solarize_threshold <= 256, "augment.solarize_threshold", augment.solarize_threshold,
                  "an integer in [0, 256]")
    require_value(len(augment.mean) == 3 and all(math.isfinite(m) for m in augment.mean), "augment.mean",
                  list(augment.mean), "3 finite per-channel values")
    require_value(len(augment.std) == 3 and all(math.isfinite(s) and s > 0 for s in augment.std),
                  "augment.std", list(augment.std), "3 finite positive per-channel values")
    require_value(augment.device_source_size is None or augment.device_source_size >= augment.size,
                  "augment.device_source_size", augment.device_source_size,
                  f"null or an integer >= augment.size ({augment.size})")
    require_value(augment.num_local_crops >= 0, "augment.num_local_crops", augment.num_local_crops,
                  "an integer >= 0 (0: the two views alone)")
    if augment.num_local_crops:  # else a smaller augment.size alone would trip it
        require_value(1 <= augment.local_size <= augment.size, "augment.local_size", augment.local_size,
                      f"a crop size in pixels, at most augment.size ({augment.size}): local crops are the small ones")
    _check_interval("augment.local_crop_scale", augment.local_crop_scale, 1e-6, 1.0)
    for key in ("view_local.blur_prob", "view_local.solarize_prob"):
        _check_probability(f"augment.{key}", OmegaConf.select(augment, key))


def _check_model(model: DictConfig) -> None:
    backbone = OmegaConf.to_container(model.backbone) if OmegaConf.is_config(model.backbone) else model.backbone
    # Whether it builds, and what it returns, is checked as it is built (before training).
    if backbone_kind(backbone) != "resnet":
        require_value(not model.small_stem, "model.small_stem", model.small_stem,
                      "null or false: the 3x3 stem is a ResNet's (a timm model takes model.backbone_kwargs)")
    require_value(model.pool in POOLS, "model.pool", model.pool, f"one of {', '.join(POOLS)}")
    parse_expander_spec(model.expander)
    require_value(model.views_forward in VIEWS_FORWARD, "model.views_forward", model.views_forward,
                  f"one of {', '.join(VIEWS_FORWARD)}")


def _check_loss(loss: DictConfig) -> None:
    for key in ("sim_coeff", "std_coeff", "cov_coeff"):
        _check_positive(f"loss.{key}", loss[key], "coefficient", allow_zero=True)
    require_value(loss.sim_coeff + loss.std_coeff + loss.cov_coeff > 0, "loss.sim_coeff", loss.sim_coeff,
                  "at least one of loss.sim_coeff/std_coeff/cov_coeff > 0")
    _check_positive("loss.eps", loss.eps, "number")
    require_value(loss.weighting in WEIGHTINGS, "loss.weighting", loss.weighting, f"one of {', '.join(WEIGHTINGS)}")


def _check_optim(optim: DictConfig) -> None:
    require_value(optim.name in OPTIMIZERS, "optim.name", optim.name, f"one of {', '.join(OPTIMIZERS)}")
    _check_positive("optim.base_lr", optim.base_lr, "learning rate")
    _check_positive("optim.probe_lr", optim.probe_lr, "learning rate")
    _check_positive("optim.weight_decay", optim.weight_decay, "number", allow_zero=True)
    require_value(0 <= optim.momentum < 1, "optim.momentum", optim.momentum, "a number in [0, 1)")
    require_value(optim.warmup_epochs >= 0, "optim.warmup_epochs", optim.warmup_epochs, "a number of epochs >= 0")
    require_value(0 <= optim.end_lr_ratio <= 1, "optim.end_lr_ratio", optim.end_lr_ratio,
                  "a fraction of the peak lr in [0, 1]")
    require_value(optim.clip_grad_norm is None or optim.clip_grad_norm > 0, "optim.clip_grad_norm",
                  optim.clip_grad_norm, "null (no clipping) or a gradient norm > 0")


def _check_schedule(optim: DictConfig, trainer: DictConfig) -> None:
    max_epochs = trainer.get("max_epochs")
    require_value(isinstance(max_epochs, int) and not isinstance(max_epochs, bool) and max_epochs >= 1,
                  "trainer.max_epochs", max_epochs, "an integer >= 1")
    # Longer than the run, the warmup would end the run before the lr reaches its peak.
    require_value(optim.warmup_epochs <= max_epochs, "optim.warmup_epochs", optim.warmup_epochs,
                  f"at most trainer.max_epochs ({max_epochs}) epochs; lower it for a short run")


CHECKS: dict[str, Callable[[DictConfig], None]] = {  # each group's value check, beyond its schema
    "data": _check_data,
    "augment": _check_augment,
    "model": _check_model,
    "loss": _check_loss,
    "optim": _check_optim,
    "paths": lambda paths: None,  # nothing beyond the schema: any path will do until it is used
}


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
