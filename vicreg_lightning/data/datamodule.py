"""The LightningDataModule: two augmented views + label for training, one view for validation."""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vicreg_lightning.data.augment import BatchViewAugment, Normalize, TwoViews, eval_transform, same_size
from vicreg_lightning.data.datasets import TensorImages, Transformed, build_datasets
from vicreg_lightning.errors import ConfigError, DataError


def default_num_workers() -> int:
    """Workers per rank when ``data.num_workers=-1``: the CPUs this process may use, up to 8."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(8, cpus)


class VICRegDataModule(pl.LightningDataModule):
    """Yields ``((view_a, view_b), label)`` batches for training and ``(image, label)`` for
    validation. ``data.batch_size`` is the global batch: each of the trainer's ranks loads
    ``batch_size / world_size`` samples per step.

    The training order is a function of ``seed`` and the epoch alone: the ranks of a DDP run split
    the same shuffled order that a single process walks through, so each step's global batch is
    the same set of images whatever the number of devices, and a resumed run sees the data a run
    without interruption would. Validation gives every image to exactly one rank (no padding), so
    the synchronised probe metrics equal a single process's.

    Loader workers yield uint8 images; normalisation (and, with ``augment.on_device=true``, the
    whole two-view augmentation, see :class:`~vicreg_lightning.data.augment.BatchViewAugment`)
    runs on the training device in :meth:`on_after_batch_transfer`.
    """

    def __init__(self, data: Any, augment: Any, seed: int = 0) -> None:
        super().__init__()
        self.data_cfg, self.augment_cfg, self.seed = data, augment, seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.num_classes: int | None = None

    def prepare_data(self) -> None:
        # Runs once per node, before setup on every rank: the only place that downloads.
        if self.data_cfg.download:
            build_datasets(self.data_cfg)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        train, val, self.num_classes = build_datasets(self.data_cfg)
        if len(train) == 0 or len(val) == 0:  # type: ignore[arg-type]
            raise DataError(f"data={self.data_cfg.name}: the train or validation split is empty")
        if len(train) < self.per_device_batch_size:  # type: ignore[arg-type]
            raise ConfigError(
                f"data.batch_size={self.data_cfg.batch_size}: each of the {self.world_size} device(s) would "
                f"need {self.per_device_batch_size} of the {len(train)} training images per step; "  # type: ignore[arg-type]
                "lower data.batch_size"
            )
        aug = self.augment_cfg
        if aug.on_device:
            if aug.device_source_size is None and not isinstance(train, TensorImages):
                raise ConfigError(
                    f"augment.on_device=true with data={self.data_cfg.name}: stored images of many sizes "
                    "cannot be batched before cropping; set augment.device_source_size (e.g. 256)"
                )
            # One stored image per sample; both views are cut from it on the device.
            self.train_set = Transformed(train, same_size(aug))
            self.device_views = nn.ModuleList([BatchViewAugment(aug, aug.view_a), BatchViewAugment(aug, aug.view_b)])
        else:
            self.train_set = Transformed(train, TwoViews(aug))
        self.normalize = Normalize(aug.mean, aug.std)
        self.val_set = Transformed(val, eval_transform(aug))

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches arrive as uint8: normalise both views, or make them here
        (``augment.on_device``). Validation batches arrive normalised."""
        images, labels = batch
        if isinstance(images, (tuple, list)):
            normalize = self.normalize.to(labels.device)
            return tuple(normalize(view) for view in images), labels
        if images.dtype == torch.uint8:
            views = self.device_views.to(images.device)
            return (views[0](images), views[1](images)), labels
        return batch

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def per_device_batch_size(self) -> int:
        batch, world = self.data_cfg.batch_size, self.world_size
        if batch % world:
            raise ConfigError(
                f"data.batch_size={batch}: the global batch must divide evenly over {world} devices; "
                f"use a multiple of {world}"
            )
        return batch // world

    def _loader(self, dataset: Dataset, train: bool) -> DataLoader:
        workers = self.data_cfg.num_workers if self.data_cfg.num_workers >= 0 else default_num_workers()
        sampler_type = DistributedSampler if train else UnrepeatedDistributedSampler
        # Lightning keeps a DistributedSampler it is given (and calls set_epoch on it).
        sampler = sampler_type(
            dataset, num_replicas=self.world_size, rank=self.rank, shuffle=train, seed=self.seed, drop_last=train
        )
        return DataLoader(
            dataset,
            batch_size=self.per_device_batch_size,
            sampler=sampler,
            # A short last batch would change the var/cov normaliser and fail across ranks' gathers.
            drop_last=train,
            num_workers=workers,
            pin_memory=self.data_cfg.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.data_cfg.persistent_workers and workers > 0,
            prefetch_factor=self.data_cfg.prefetch_factor if workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        assert self.train_set is not None, "call setup() first"
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        return self._loader(self.val_set, train=False)
