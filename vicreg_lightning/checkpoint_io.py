"""Checkpoint files that are always whole: the previous checkpoint survives any failed write.

Lightning's writer stages the file in the system's temporary directory and moves it into place.
When the run directory is on another file system (the usual cluster layout: a local ``/tmp``, a
shared run directory), the rename fails and the move falls back to truncating the target and
copying into it: a process killed during that copy, or a full disk, leaves a short or empty
``last.ckpt`` and the previous one is gone. Here the temporary file lies beside the target, is
flushed to disk, and replaces it by one rename, which the file system does whole or not at all
(the run directory's one writer of whole files, :func:`~vicreg_lightning.run_dir.replace_atomically`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vicreg_lightning.run_dir import replace_atomically


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, saving through :func:`~vicreg_lightning.run_dir.replace_atomically`
    (the Trainer's every checkpoint goes through it: ``ModelCheckpoint``, the preemption checkpoint,
    SLURM's)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        if "://" in str(path):  # remote storage (s3://, gs://): its own transactions
            super().save_checkpoint(checkpoint, path)
        else:
            replace_atomically(Path(path), lambda f: torch.save(checkpoint, f))
