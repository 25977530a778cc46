"""Checkpoint files that are always whole: the previous checkpoint survives any failed write.

Lightning's writer stages the file in the system's temporary directory and moves it into place.
When the run directory is on another file system (the usual cluster layout: a local ``/tmp``, a
shared run directory), the rename fails and the move falls back to truncating the target and
copying into it: a process killed during that copy, or a full disk, leaves a short or empty
``last.ckpt`` and the previous one is gone. Here the temporary file lies beside the target, is
flushed to disk, and replaces it by one rename, which the file system does whole or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO


def save_atomically(checkpoint: dict[str, Any], path: str | os.PathLike) -> None:
    """``torch.save(checkpoint, path)`` through a temporary file in ``path``'s directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    # The rename itself reaches the disk with the directory's entry.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, saving with :func:`save_atomically` (the Trainer's every
    checkpoint goes through it: ``ModelCheckpoint``, the preemption checkpoint, SLURM's)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        if "://" in str(path):  # remote storage (s3://, gs://): its own transactions
            super().save_checkpoint(checkpoint, path)
        else:
            save_atomically(checkpoint, path)
