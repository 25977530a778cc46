"""Resuming a run exactly: which checkpoint, whether it fits this run, and the random state.

A resumed run must end where the uninterrupted run would: Lightning restores weights, optimiser,
LR schedule, loop counters and callback state; the data module restores the position in the
training order, whose views are keyed by sample (``VICRegDataModule``); :func:`capture_rng_states`
adds the random number generators of every rank, which drive ``augment.on_device``. (The
checkpoint taken when a run is stopped: :mod:`vicreg_lightning.callbacks.preemption`.)
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist

from vicreg_lightning.errors import ConfigError
from vicreg_lightning.weights import weight_mismatches
from vicreg_lightning.run_dir import HPC_CHECKPOINT_GLOB, read_torch_file

LAST_CHECKPOINT = "last"


def resolve_checkpoint(ckpt_path: str | None, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``None``, a file, or ``"last"``: the newest of
    ``<output_dir>/checkpoints/last*.ckpt`` and Lightning's SLURM ``hpc_ckpt_*.ckpt`` — or ``None``
    (a fresh start) when the run directory has none yet, so that a requeued job, started with the
    same command line, resumes if and only if there is something to resume."""
    if ckpt_path is None:
        return None
    if ckpt_path != LAST_CHECKPOINT:
        return Path(ckpt_path)
    candidates = [*(output_dir / "checkpoints").glob("last*.ckpt"), *output_dir.glob(HPC_CHECKPOINT_GLOB)]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None


def check_checkpoint(path: Path, module: torch.nn.Module, ckpt_path: str, max_epochs: int = -1,
                     max_steps: int = -1) -> None:
    """Fail with one line, before training, when ``path`` is missing, corrupt, or written for a
    different model (names or shapes of the weights differ); when it cannot continue its run (another
    optimiser, another global batch: another training order and step count); or when its run has
    nothing left to train within ``max_epochs`` / ``max_steps``."""
    checkpoint = read_torch_file(path, f"ckpt_path={ckpt_path!r}", ConfigError,
                                 hint="; pass a checkpoint from <run dir>/checkpoints/")
    try:
        mismatches = weight_mismatches(module.state_dict(), checkpoint["state_dict"])
    except Exception as e:  # noqa: BLE001 - any failure to read it is the same answer for the user
        raise ConfigError(f"ckpt_path={ckpt_path!r}: not a readable vicreg-lightning checkpoint ({e})") from None
    if mismatches:
        more = f" (and {len(mismatches) - 1} more)" if len(mismatches) > 1 else ""
        raise ConfigError(
            f"ckpt_path={ckpt_path!r}: written for a different model ({mismatches[0]}{more}); "
            "use the model.* settings of the run that wrote it"
        )
    # The optimiser's state (momentum, Adam's moments) continues only in the optimiser that wrote it.
    saved = (checkpoint.get("hyper_parameters") or {}).get("optim", {}).get("name")
    current = getattr(module, "hparams", {}).get("optim", {}).get("name")
    if saved is not None and current is not None and saved != current:
        raise ConfigError(
            f"ckpt_path={ckpt_path!r}: written with optim.name={saved!r}, this run uses {current!r}; resume with "
            f"optim={saved}, or start a new run from its weights (python -m vicreg_lightning.export)"
        )
    hparams = checkpoint.get("hyper_parameters") or {}
    saved_batch, batch = hparams.get("batch_size"), getattr(module, "hparams", {}).get("batch_size")
    if saved_batch is not None and batch is not None and saved_batch != batch:
        raise ConfigError(
            f"ckpt_path={ckpt_path!r}: written with data.batch_size={saved_batch}, this run has {batch}: the training "
            f"order and the step count would not continue its run; resume with data.batch_size={saved_batch}, or "
            "start a new run from its weights (vicreg-export, then model.init_weights=<export>/backbone.pt)"
        )
    # Epochs whose training ended (the checkpoint's "epoch" is not increased yet at an epoch's end).
    progress = (checkpoint.get("loops") or {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {})
    epoch, step = int(progress.get("processed", checkpoint.get("epoch", 0))), int(checkpoint.get("global_step", 0))
    if (0 <= max_epochs <= epoch) or (0 < max_steps <= step):
        limit = f"trainer.max_epochs={max_epochs}" if 0 <= max_epochs <= epoch else f"trainer.max_steps={max_steps}"
        raise ConfigError(
            f"ckpt_path={ckpt_path!r}: its run has trained {epoch} epoch(s), {step} step(s): nothing left to train "
            f"within {limit}; to train longer, raise it"
        )


def capture_rng_states() -> list[dict[str, Any]]:
    """The RNG states of every rank (a collective under DDP: all ranks must call it, as they all
    do when Lightning dumps a checkpoint). Tensors and tuples only, so that the checkpoint still
    loads with ``weights_only=True``."""
    name, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached_gaussian),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    states: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(states, state)
    return states


def restore_rng_states(states: list[dict[str, Any]]) -> None:
    """Restore this rank's RNG states; a checkpoint from another number of ranks keeps the seeded
    states (the run continues, but no longer draws exactly what it would have)."""
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    if len(states) != world:
        pl.utilities.rank_zero_warn(
            f"checkpoint holds RNG states of {len(states)} rank(s), this run has {world}: "
            "augmentations will not repeat those of an uninterrupted run"
        )
        return
    state = states[rank]
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached_gaussian = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached_gaussian))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
