"""Throughput: ``train/samples_per_s`` and ``train/epoch_time_s``."""

from __future__ import annotations

import time
from typing import Any

import lightning.pytorch as pl


class Throughput(pl.Callback):
    """Log ``train/samples_per_s`` (global: all ranks' images per second of wall time, averaged
    since the previous log) and ``train/epoch_time_s``.

    Wall time between batch ends, without a device sync: on a GPU a step only queues kernels, but
    the queue is drained at least at every logging step, so the average over a logging interval
    is the true rate.
    """

    def __init__(self) -> None:
        self._interval_start = 0.0
        self._interval_samples = 0
        self._epoch_start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._epoch_start = self._interval_start = time.perf_counter()
        self._interval_samples = 0

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        _, labels = batch
        self._interval_samples += len(labels) * trainer.world_size
        if (batch_idx + 1) % trainer.log_every_n_steps == 0:
            now = time.perf_counter()
            rate = self._interval_samples / max(now - self._interval_start, 1e-9)
            pl_module.log("train/samples_per_s", rate, on_step=True, on_epoch=False, rank_zero_only=True)
            self._interval_start, self._interval_samples = now, 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        pl_module.log("train/epoch_time_s", time.perf_counter() - self._epoch_start, rank_zero_only=True)
