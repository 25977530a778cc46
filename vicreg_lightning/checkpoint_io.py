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

import errno
import shutil
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from vicreg_lightning.errors import NoSpaceForCheckpoint
from vicreg_lightning.run_dir import replace_atomically

# A checkpoint's size when there is none beside it to go by.
_TYPICAL_CHECKPOINT_BYTES = 64 * 2**20


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, saving through :func:`~vicreg_lightning.run_dir.replace_atomically`
    (the Trainer's every checkpoint goes through it: ``ModelCheckpoint``, the preemption checkpoint,
    SLURM's)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        if "://" in str(path):  # remote storage (s3://, gs://): its own transactions
            super().save_checkpoint(checkpoint, path)
            return
        path = Path(path)
        try:
            replace_atomically(path, lambda f: torch.save(checkpoint, f))
        except (OSError, RuntimeError) as error:  # torch reports a failed write as a RuntimeError
            saved = list(path.parent.glob("*.ckpt"))
            if not _out_of_space(error, path.parent, saved):
                raise
            if saved:
                then = "the checkpoints saved before are kept whole: free space, then continue with ckpt_path=last"
            else:
                then = "no checkpoint was saved yet: free space, then start again"
            raise NoSpaceForCheckpoint(
                f"no space left on the file system of {str(path.parent)!r} to save {path.name} at step "
                f"{checkpoint.get('global_step', '?')}; {then} (the same hydra.run.dir)") from None


def _out_of_space(error: BaseException, folder: Path, saved: list[Path]) -> bool:
    """Whether a failed write in ``folder`` ran out of space: the error says so, or (torch's writer
    drops the errno) the file system has less free space than a checkpoint takes."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    size = max((path.stat().st_size for path in saved), default=_TYPICAL_CHECKPOINT_BYTES)
    return shutil.disk_usage(folder).free < size
