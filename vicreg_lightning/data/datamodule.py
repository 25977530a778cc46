"""The LightningDataModule: two augmented views + label for training, one view for validation."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import warnings
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from vicreg_lightning.data.augment import Normalize, SameSize, Views, device_views, eval_transform
from vicreg_lightning.data.catalog import MAX_DEFAULT_WORKERS
from vicreg_lightning.data.datasets import KeyedSamples, TensorImages, Transformed, build_datasets
from vicreg_lightning.data.sampler import EpochSampler, position
from vicreg_lightning.errors import ConfigError, DataError
from vicreg_lightning.memory import available_memory


def ignore_stop_signals(worker_id: int) -> None:
    """Loader workers leave Ctrl-C and the scheduler's SIGTERM to the main process, and end on a
    SIGTERM from their main process. A scheduler signals every process of a job, and Ctrl-C the
    terminal's whole process group: a worker that died of it would end the run with a DataLoader
    error (raised at any point of a step, a checkpoint being saved included) instead of the
    checkpoint-and-exit path. Under srun each process of a task gets a preemption's SIGTERM twice
    (from its step and forwarded by srun), so the sender tells the two apart, not the count: the
    main process's SIGTERM (what it sends a worker that does not stop, and Python daemon processes
    left at exit) ends the worker as usual.

    Their random state needs no seeding: the augmentation draws from generators keyed by the sample
    (:func:`~vicreg_lightning.data.augment.view_generator`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    main = multiprocessing.parent_process()  # the rank, also when a forkserver forked the worker
    if main is None or not hasattr(signal, "sigwaitinfo"):  # no sender to read (macOS): ignore the first
        signal.signal(signal.SIGTERM, _end_on_the_next_sigterm)
        return
    # Blocked in this thread and so in every thread started after it: only the waiter receives it
    # (a handler, not SIG_IGN, under which the kernel may drop it before the waiter reads it).
    signal.signal(signal.SIGTERM, _leave_to_the_main_process)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    threading.Thread(target=_end_on_sigterm_from, args=(main.pid,), name="sigterm-from-main", daemon=True).start()


def _end_on_sigterm_from(main_pid: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != main_pid:
        pass
    os._exit(128 + signal.SIGTERM)  # the shell's code for a process ended by SIGTERM


def _leave_to_the_main_process(signum: int, frame: Any) -> None:
    pass


def _end_on_the_next_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


# Imported once by the forkserver, so that each worker it forks starts with them loaded.
_FORKSERVER_PRELOAD = ["torch", "vicreg_lightning.data.augment", "vicreg_lightning.data.datasets"]


def worker_start_method(workers: int) -> str | None:
    """The ``multiprocessing_context`` of a loader with ``workers`` workers: None (no workers, or
    fork, Linux's default), or ``forkserver`` in a DDP process on a Python with CPython's fork bug (https://github.com/python/cpython/issues/112275,
    fixed in 3.11.8 and 3.12). There a child forked while another thread holds the interpreter's
    runtime lock hangs before it runs a line; DDP's communication threads take that lock, and the
    rank then waits for ever on a loader worker that never started (seen on a 2-task SLURM job).
    A forkserver's children are forked from a process that has no such threads."""
    if workers == 0 or sys.version_info >= (3, 11, 8) or not (
            torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    multiprocessing.set_forkserver_preload(_FORKSERVER_PRELOAD)
    return "forkserver"


def per_device_batch_size(batch: int, world: int) -> int:
    """Each device's share of the global batch ``data.batch_size``."""
    if batch % world:
        raise ConfigError(
            f"data.batch_size={batch}: the global batch must divide evenly over {world} devices; "
            f"use a multiple of {world}"
        )
    return batch // world


def default_num_workers() -> int:
    """Workers per rank when ``data.num_workers=-1``: the CPUs this process may use, up to
    :data:`~vicreg_lightning.data.catalog.MAX_DEFAULT_WORKERS`."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(MAX_DEFAULT_WORKERS, cpus)


def check_views_fit(data: Any, augment: Any) -> None:
    """Refuse, before any view is made, a batch whose views alone (float32, both views and every
    local crop of ``data.batch_size`` samples) need more memory than this machine has: the run would
    grow until the system stops it."""
    pixels = 2 * augment.size**2 + augment.num_local_crops * augment.local_size**2
    needed, available = data.batch_size * pixels * 3 * 4, available_memory()
    if available is not None and needed > available:
        raise ConfigError(
            f"augment.num_local_crops={augment.num_local_crops}: one batch of views needs {needed / 2**30:,.1f} GiB "
            f"(data.batch_size={data.batch_size} x (2 x {augment.size}^2 + {augment.num_local_crops} x "
            f"{augment.local_size}^2) pixels in float32), more than this machine has ({available / 2**30:.1f} GiB "
            "available); use fewer or smaller local crops, or a smaller batch"
        )


class VICRegDataModule(pl.LightningDataModule):
    """Yields ``((view_a, view_b, *local_crops), label)`` batches for training (``augment.num_local_crops``
    local crops, none by default) and ``(image, label)`` for validation. ``data.batch_size`` is the global batch: each of the trainer's ranks loads
    ``batch_size / world_size`` samples per step.

    The training order is a function of ``seed`` and the epoch alone (:class:`EpochSampler`), and so
    are the views: each view's random draws come from ``(seed, epoch, sample index, view)``
    (:class:`~vicreg_lightning.data.augment.Views`). A sample's views are therefore the same
    whatever the number of loader workers or devices, and a run resumed from any checkpoint, at an
    epoch's end or within one, sees exactly the batches an uninterrupted run would. Validation gives
    every image to exactly one rank (no padding), so the synchronised probe metrics equal a single
    process's.

    Loader workers yield uint8 images; normalisation (and, with ``augment.on_device=true``, the
    whole two-view augmentation, see :class:`~vicreg_lightning.data.augment.BatchViewAugment`)
    runs on the training device in :meth:`on_after_batch_transfer`.
    """

    def __init__(self, data: Any, augment: Any, seed: int = 0) -> None:
        super().__init__()
        check_views_fit(data, augment)
        self.data_cfg, self.augment_cfg, self.seed = data, augment, seed
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.num_classes: int | None = None
        self._train_sampler: EpochSampler | None = None
        self._resume_position: dict[str, Any] | None = None
        # data.access=stream: LitData's order (vicreg_lightning.data.shards), not the sampler's.
        self.stream = data.name == "shards" and data.access == "stream"
        self._stream_loaders: Any = None

    def state_dict(self) -> dict[str, Any]:
        """Saved in every checkpoint: where the training order goes on (epoch, batch); with
        ``data.access=stream``, also LitData's loader state there."""
        if self.trainer is None or (self._train_sampler is None and self._stream_loaders is None):
            return {}
        # `processed`: the batches whose training step has run, also inside on_train_batch_end
        # (where Lightning's `completed` counter is one behind).
        done = self.trainer.fit_loop.epoch_loop.batch_progress.current.processed
        if self._stream_loaders is not None:
            where = position(self.trainer.current_epoch, done, self.trainer.num_training_batches)
            return {"train_position": {**where, "loader": self._stream_loaders.state_at(where["batch"])}}
        return {"train_position": self._train_sampler.position(done, self.trainer.num_training_batches)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restored before the training loader exists (Lightning restores the data module before it
        first asks for the loader, which may happen before the loops' own state is restored), so the
        loader's first iterator, whenever it is made, starts at the saved position."""
        self._resume_position = state.get("train_position")
        # Mid-epoch, a position of one order cannot continue the other (an epoch's start can).
        saved_stream = "loader" in (self._resume_position or {})
        if self._resume_position and self._resume_position["batch"] and saved_stream != self.stream:
            raise ConfigError(
                f"ckpt_path: saved mid-epoch with data.access={'stream' if saved_stream else 'indexed'}; resume with "
                "that data.access (the two read the samples in different orders)"
            )
        # Lightning cannot see that the position is restored here and warns about it.
        warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")

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
            # One stored image per sample; every view is cut from it on the device.
            self.train_set = KeyedSamples(train, SameSize(aug))
            self.device_views = device_views(aug)
        else:
            self.train_set = KeyedSamples(train, Views(aug, self.seed))
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
            return tuple(view(images) for view in views), labels
        return batch

    @property
    def world_size(self) -> int:
        return self.trainer.world_size if self.trainer is not None else 1

    @property
    def rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    @property
    def per_device_batch_size(self) -> int:
        return per_device_batch_size(self.data_cfg.batch_size, self.world_size)

    def _loader(self, dataset: Dataset, sampler: DistributedSampler, train: bool) -> DataLoader:
        workers = self.data_cfg.num_workers if self.data_cfg.num_workers >= 0 else default_num_workers()
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
            worker_init_fn=ignore_stop_signals,
            multiprocessing_context=worker_start_method(workers),
            # The workers' base seed comes from here, not from the global generator: creating an
            # iterator (as a resumed run does before its first step) must not move the generator
            # that augment.on_device draws from.
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> Any:
        assert self.train_set is not None, "call setup() first"
        if self.stream:
            return self._stream_dataloader()
        self._train_sampler = EpochSampler(self.train_set, self.world_size, self.rank, self.seed,
                                           self.per_device_batch_size)
        if self._resume_position is not None:
            self._train_sampler.start_at(self._resume_position)
            self._resume_position = None
        return self._loader(self.train_set, self._train_sampler, train=True)

    def _stream_dataloader(self) -> Any:
        from vicreg_lightning.data.shards import StreamLoaders, StreamViews

        workers = self.data_cfg.num_workers if self.data_cfg.num_workers >= 0 else default_num_workers()
        dataset = StreamViews(self.data_cfg, self.train_set.transform, self.seed)  # type: ignore[union-attr]
        # A fresh loader each epoch (StreamLoaders): persistent workers would outlive their loader.
        args = {"batch_size": self.per_device_batch_size, "num_workers": workers, "worker_init_fn": ignore_stop_signals,
                "pin_memory": self.data_cfg.pin_memory and torch.cuda.is_available(),
                "prefetch_factor": self.data_cfg.prefetch_factor if workers > 0 else None,
                "multiprocessing_context": worker_start_method(workers)}
        # LitData gives each worker its own part of the stream; Lightning cannot see that and warns.
        warnings.filterwarnings("ignore", message="Your `IterableDataset` has `__len__` defined")
        self._stream_loaders = StreamLoaders(dataset, lambda: self.trainer.current_epoch, args, self._resume_position)
        self._resume_position = None
        return self._stream_loaders

    def val_dataloader(self) -> DataLoader:
        assert self.val_set is not None, "call setup() first"
        sampler = UnrepeatedDistributedSampler(self.val_set, num_replicas=self.world_size, rank=self.rank, shuffle=False)
        return self._loader(self.val_set, sampler, train=False)
