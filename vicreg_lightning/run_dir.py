"""What a run directory holds, and the rule that protects it: nothing saved there is lost.

A job's directory (``hydra.run.dir``) holds ``.hydra/`` (the composed config, Hydra's config and
the overrides), ``metrics.json`` once the job has finished, ``failure.json`` when a job of a
``-m`` sweep failed, and whatever the job writes itself (checkpoints, logs).

Hydra would write ``.hydra/`` as the job starts, before the job can look at the directory: a run
refused because the directory holds a finished run would still replace the finished run's config.
So ``conf/hydra/default.yaml`` sets ``hydra.output_subdir: null`` and the job writes ``.hydra/``
itself (:func:`save_job_config`) once :func:`claim` has allowed it.

This module imports no torch or Lightning (:func:`read_torch_file` imports torch when called).
"""

from __future__ import annotations

import json
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

from omegaconf import OmegaConf

from vicreg_lightning.errors import ConfigError, UserError

METRICS_FILE = "metrics.json"
FAILURE_FILE = "failure.json"
# Written by a run that the search stopped early (vicreg_lightning/hparams_search/pruning.py).
PRUNED_FILE = "pruned.json"
CONFIG_DIR = ".hydra"
CHECKPOINT_DIR = "checkpoints"
# Lightning's SLURM auto-requeue writes these into the run directory on the requeue signal.
HPC_CHECKPOINT_GLOB = "hpc_ckpt_*.ckpt"


def run_dir_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint file belongs to (``<run dir>/checkpoints/*.ckpt``, or
    Lightning's SLURM ``hpc_ckpt_*.ckpt`` in the run directory itself); None when the file was
    moved away from its ``.hydra/config.yaml``."""
    for folder in (checkpoint.parent.parent, checkpoint.parent):
        if (folder / CONFIG_DIR / "config.yaml").is_file():
            return folder
    return None


def read_torch_file(path: Path, shown: str, error: type[UserError] = UserError, hint: str = "") -> Any:
    """``torch.load`` of a file ``torch.save`` wrote (a checkpoint, an exported state dict): weights
    only, as Lightning loads checkpoints, and memory-mapped, so that a checkpoint's optimiser state
    (twice the weights under LARS) is never read. A missing, truncated or unreadable file is an
    ``error`` naming it as ``shown``, ``hint`` added where it is missing."""
    import torch

    if not path.is_file():
        raise error(f"{shown}: no such file or folder{hint}")
    # torch.save writes a zip archive: anything else is truncated or not a torch file at all.
    if not zipfile.is_zipfile(path):
        raise error(f"{shown}: not a readable PyTorch file (corrupt or truncated)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:  # noqa: BLE001 - any failure to read it is the same answer for the user
        raise error(f"{shown}: not readable ({type(e).__name__}: {str(e).splitlines()[0]})") from None


def is_finished(output_dir: Path) -> bool:
    return (output_dir / METRICS_FILE).is_file()


def read_metrics(output_dir: Path) -> dict[str, float]:
    return json.loads((output_dir / METRICS_FILE).read_text())


def write_metrics(path: Path, metrics: dict[str, float]) -> None:
    """Write ``metrics.json`` atomically: a reader never sees a half-written file."""
    write_atomically(path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`replace_atomically`."""
    replace_atomically(path, lambda f: f.write(text.encode()))


def replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Let ``write`` fill a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``: the old content stays whole until the new one is, whatever fails in between (a full
    disk, a killed process), also where ``/tmp`` is on another file system than ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
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


def claim(output_dir: Path, ckpt_path: str | None) -> bool:
    """May a training job write into ``output_dir``? False when ``ckpt_path=last`` finds the run
    there finished (a requeued job that had already ended: nothing to do). Raises, before anything
    is written, when the job would overwrite saved work: a finished run, or the checkpoints of an
    unfinished one started again from scratch."""
    if is_finished(output_dir):
        if ckpt_path == "last":
            return False
        raise ConfigError(
            f"hydra.run.dir={str(output_dir)!r} already holds a finished run (metrics.json); choose a new "
            "hydra.run.dir (to train it longer: hydra.run.dir=<new> "
            f"ckpt_path={output_dir / CHECKPOINT_DIR / 'last.ckpt'})"
        )
    saved = [*(output_dir / CHECKPOINT_DIR).glob("*.ckpt"), *output_dir.glob(HPC_CHECKPOINT_GLOB)]
    if ckpt_path is None and saved:
        raise ConfigError(
            f"hydra.run.dir={str(output_dir)!r} holds the checkpoints of an unfinished run; resume it with "
            "ckpt_path=last, or choose a new hydra.run.dir"
        )
    return True


def is_first_process() -> bool:
    """Rank 0 of a job, told from the environment as Lightning tells it (a DDP child, a SLURM task
    and a second node's processes carry their rank there before any process group exists)."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        if name in os.environ:
            return int(os.environ[name]) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0
    return int(os.environ.get("NODE_RANK", "0")) == 0


def save_job_config(cfg: Any) -> None:
    """Write ``.hydra/config.yaml``, ``hydra.yaml`` and ``overrides.yaml`` into the job's run
    directory, as Hydra would (nothing outside a Hydra job, nothing on other ranks than 0). A
    directory that has them already (a resumed run) keeps them: they describe how the run began."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not is_first_process():
        return
    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir) / CONFIG_DIR
    if (folder / "config.yaml").exists():
        return
    folder.mkdir(parents=True, exist_ok=True)
    documents = {
        "config.yaml": cfg,
        "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
        "overrides.yaml": hydra_cfg.overrides.task,
    }
    for name, document in documents.items():
        write_atomically(folder / name, OmegaConf.to_yaml(document))
