"""The config schema: one structured config per group, saying what each key is (its type).

The YAML under ``conf/`` is the only place a value is written, so no field here has a default
(``MISSING``). :func:`register_schemas` registers each group's as ``schema/<group>`` in Hydra's
ConfigStore, which each preset of ``conf/`` starts from (``defaults: [/schema/<group>@_here_, ...]``):
Hydra checks every key and type as it composes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING


@dataclass
class ViewConfig:
    """What differs between the two views."""

    blur_prob: float = MISSING
    solarize_prob: float = MISSING


@dataclass
class AugmentConfig:
    """``conf/augment``: the augmentations of both views, and the validation transform."""

    size: int = MISSING
    crop_scale: list[float] = MISSING
    crop_ratio: list[float] = MISSING
    hflip_prob: float = MISSING
    jitter_prob: float = MISSING
    brightness: float = MISSING
    contrast: float = MISSING
    saturation: float = MISSING
    hue: float = MISSING
    grayscale_prob: float = MISSING
    blur_sigma: list[float] = MISSING
    blur_kernel_size: int = MISSING
    solarize_threshold: int = MISSING
    view_a: ViewConfig = MISSING
    view_b: ViewConfig = MISSING
    num_local_crops: int = MISSING  # multi-crop: further views, each a small crop, per sample
    local_size: int = MISSING  # their size in pixels
    local_crop_scale: list[float] = MISSING  # their share of the image's area
    view_local: ViewConfig = MISSING  # their blur and solarisation
    val_resize: int = MISSING  # validation: resize the short side to this, then centre-crop to size
    mean: list[float] = MISSING
    std: list[float] = MISSING
    on_device: bool = MISSING  # both views made on the training device (kornia), not in the workers
    device_source_size: Optional[int] = MISSING  # folder data with on_device: the stored square's size


@dataclass
class DataConfig:
    """``conf/data``: one data set of the registry (:data:`~vicreg_lightning.data.catalog.DATASETS`)."""

    name: str = MISSING
    root: str = MISSING
    download: bool = MISSING
    batch_size: int = MISSING  # global: split over devices and nodes
    micro_batch_size: Optional[int] = MISSING  # per device, None: one pass; exact but a backbone's BatchNorm (micro_batch.py)
    num_workers: int = MISSING  # -1: chosen from the CPU count
    pin_memory: bool = MISSING
    persistent_workers: bool = MISSING
    prefetch_factor: int = MISSING
    val_fraction: float = MISSING  # digits, and folders without a val split
    split_seed: int = MISSING
    train_dir: str = MISSING  # folder data sets: sub-folders of root
    val_dir: str = MISSING
    bad_images: str = MISSING  # folder data sets: files that cannot be images; error or skip
    input_dir: Optional[str] = MISSING  # data=shards: a local folder or s3:// / gs:// URL of vicreg-shard's output
    cache_dir: Optional[str] = MISSING  # data=shards from an object store: LitData's chunk cache; None: its default
    max_cache_size: Optional[str] = MISSING  # that cache's budget (e.g. 100GB); None: LitData's default
    access: str = MISSING  # data=shards: indexed (any step, any device count) or stream (object stores)
    remote_timeout_s: Optional[float] = MISSING  # data=shards from an object store: the first answer's deadline


@dataclass
class ModelConfig:
    """``conf/model``."""

    backbone: Any = MISSING  # a ResNet name, timm:<name>, or {_target_: ...} (vicreg_lightning.backbones)
    backbone_kwargs: dict[str, Any] = MISSING  # timm: and _target_ backbones: constructor arguments
    pool: str = MISSING  # auto (the model's own), cls (class token) or avg
    init_weights: Optional[str] = MISSING  # a local state dict to start the backbone from
    small_stem: Optional[bool] = MISSING  # ResNets; None: chosen from augment.size (backbones.uses_small_stem)
    zero_init_residual: bool = MISSING  # ResNets
    expander: str = MISSING
    channels_last: Optional[bool] = MISSING  # None: on when CUDA is available, for convolutional backbones
    compile: bool = MISSING
    views_forward: str = MISSING


@dataclass
class LossConfig:
    """``conf/loss``."""

    sim_coeff: float = MISSING
    std_coeff: float = MISSING
    cov_coeff: float = MISSING
    eps: float = MISSING
    weighting: str = MISSING
    gather_distributed: bool = MISSING


@dataclass
class OptimConfig:
    """``conf/optim``."""

    name: str = MISSING
    base_lr: float = MISSING  # lr = base_lr * global batch / 256
    weight_decay: float = MISSING
    momentum: float = MISSING
    eta: float = MISSING
    betas: list[float] = MISSING
    exclude_bias_and_norm: bool = MISSING
    warmup_epochs: float = MISSING
    end_lr_ratio: float = MISSING
    probe_lr: float = MISSING
    clip_grad_norm: Optional[float] = MISSING  # the encoder's gradient norm, clipped to this; None: off


@dataclass
class PathsConfig:
    """``conf/paths``."""

    output_dir: str = MISSING
    data_dir: str = MISSING


@dataclass
class TrainConfig:
    """``conf/train.yaml``. ``trainer`` holds ``lightning.pytorch.Trainer`` arguments
    (:func:`check_trainer_arguments`); ``callbacks`` and ``logger``, ``_target_`` entries."""

    data: DataConfig = MISSING
    augment: AugmentConfig = MISSING
    model: ModelConfig = MISSING
    loss: LossConfig = MISSING
    optim: OptimConfig = MISSING
    trainer: dict[str, Any] = MISSING
    callbacks: Optional[dict[str, Any]] = MISSING
    logger: Optional[dict[str, Any]] = MISSING
    paths: PathsConfig = MISSING
    task_name: str = MISSING
    seed: Optional[int] = MISSING
    ckpt_path: Optional[str] = MISSING
    optimized_metric: str = MISSING


# The groups that have a schema of their own (their presets start from it).
SCHEMAS: dict[str, type] = {
    "data": DataConfig,
    "augment": AugmentConfig,
    "model": ModelConfig,
    "loss": LossConfig,
    "optim": OptimConfig,
    "paths": PathsConfig,
}


def register_schemas() -> None:
    """One structured config per group in Hydra's ConfigStore, as ``schema/<group>``."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, schema in SCHEMAS.items():
        store.store(group="schema", name=group, node=schema)
