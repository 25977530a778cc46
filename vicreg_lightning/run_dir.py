"""What a run directory holds, and the rule that protects it: nothing saved there is lost.

A job's directory (``hydra.run.dir``) holds ``.hydra/`` (the composed config, Hydra's config and
the overrides), ``metrics.json`` once the job has finished, ``failure.json`` when a job of a
``-m`` sweep failed, and whatever the job writes itself (checkpoints, logs).

Hydra would write ``.hydra/`` as the job starts, before the job can look at the directory: a run
refused because the directory holds a finished run would still replace the finished run's config.
So ``conf/hydra/default.yaml`` sets ``hydra.output_subdir: null`` and the job writes ``.hydra/``
itself (:func:`save_job_config`) once :func:`claim` has allowed it.

A job holds its directory for as long as it runs (:func:`held`, an exclusive lock on
``<run dir>/.lock``), and only then looks at what the directory holds (:func:`claim`): two jobs
started into one directory cannot both pass the checks.

This module imports no torch or Lightning (:func:`read_torch_file` imports torch when called).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vicreg_lightning.errors import RunDirRefused, UserError

METRICS_FILE = "metrics.json"
FAILURE_FILE = "failure.json"
# Written by a run that the search stopped early (vicreg_lightning/hparams_search/pruning.py).
PRUNED_FILE = "pruned.json"
CONFIG_DIR = ".hydra"
LOCK_FILE = ".lock"
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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # PermissionError: alive, another user's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def replace_atomically(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Let ``write`` fill a temporary file beside ``path``, flush it to disk, then rename it over
    ``path``: the old content stays whole until the new one is, whatever fails in between (a full
    disk, a killed process), also where ``/tmp`` is on another file system than ``path``. The
    temporary file of a writer killed mid-write (SIGKILL: the OOM killer, a preemption cut short)
    is removed by the next write of the same file."""
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
    for stale in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = stale.name.rpartition("-")[2]
        if pid.isdigit() and not _alive(int(pid)):
            stale.unlink(missing_ok=True)
    # The rename itself reaches the disk with the directory's entry.
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


@contextmanager
def held(output_dir: Path) -> Iterator[None]:
    """Hold ``output_dir`` for this job (created if need be) while the block runs: a second job
    started into it meanwhile is refused, naming the process that holds it. Other ranks of the job
    (DDP, SLURM tasks) run under rank 0's hold. A directory that cannot be written is refused.
    The lock file is removed on release, so a finished run's directory is left as it was, and a
    directory made here that the job left empty (it was refused) is removed."""
    if not is_first_process():
        yield
        return
    shown = f"hydra.run.dir={str(output_dir)!r}"
    lock = output_dir / LOCK_FILE
    created = not output_dir.exists()
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except FileExistsError:
        raise RunDirRefused(f"{shown} is a file, not a folder; choose a new hydra.run.dir") from None
    except OSError as e:
        raise RunDirRefused(f"{shown}: cannot write there ({e.strerror}); choose a writable hydra.run.dir") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The holder may have removed the file between our open and our lock: then it is not ours.
        if os.fstat(fd).st_ino != os.stat(lock).st_ino:
            raise BlockingIOError(errno.EWOULDBLOCK, "lock file replaced")
    except (BlockingIOError, FileNotFoundError):
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise RunDirRefused(f"{shown} is in use by another run (process {holder}); wait for it to end, or "
                            "choose a new hydra.run.dir") from None
    try:
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)  # releases the lock
        if created and not any(output_dir.iterdir()):  # a job refused before it wrote anything
            output_dir.rmdir()


def recorded_task(output_dir: Path) -> str | None:
    """The task (``task_name``: train, eval) whose config ``output_dir/.hydra`` records, if any."""
    try:
        return str(OmegaConf.load(output_dir / CONFIG_DIR / "config.yaml").task_name)
    except (OSError, OmegaConfBaseException):
        return None


def saved_checkpoints(output_dir: Path) -> list[Path]:
    """The checkpoints a run has saved in ``output_dir`` (its own, and Lightning's SLURM ones)."""
    return [*(output_dir / CHECKPOINT_DIR).glob("*.ckpt"), *output_dir.glob(HPC_CHECKPOINT_GLOB)]


def claim(output_dir: Path, ckpt_path: str | None, task: str = "train") -> bool:
    """May a training job write into ``output_dir``? False when ``ckpt_path=last`` finds the run
    there finished (a requeued job that had already ended: nothing to do). Raises, before anything
    is written, when the job would overwrite saved work: a finished run, another task's directory,
    or the checkpoints of an unfinished run started again from scratch or from another run's
    checkpoint. Call it while holding the directory (:func:`held`)."""
    shown = f"hydra.run.dir={str(output_dir)!r}"
    other = recorded_task(output_dir)
    if other is not None and other != task:
        raise RunDirRefused(f"{shown} holds the directory of another task ({other}); choose a new hydra.run.dir")
    if is_finished(output_dir):
        if ckpt_path == "last":
            return False
        raise RunDirRefused(
            f"{shown} already holds a finished run (metrics.json); choose a new "
            "hydra.run.dir (to train it longer: hydra.run.dir=<new> "
            f"ckpt_path={output_dir / CHECKPOINT_DIR / 'last.ckpt'})"
        )
    saved = saved_checkpoints(output_dir)
    if saved and ckpt_path is None:
        raise RunDirRefused(
            f"{shown} holds the checkpoints of an unfinished run; resume it with "
            "ckpt_path=last, or choose a new hydra.run.dir"
        )
    if saved and ckpt_path != "last" and Path(ckpt_path).resolve() not in {p.resolve() for p in saved}:
        raise RunDirRefused(
            f"{shown} holds the checkpoints of an unfinished run, which ckpt_path={ckpt_path!r} would replace; "
            f"resume that run with ckpt_path=last, or start from {ckpt_path} in a new hydra.run.dir"
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
    resumed run (the directory holds checkpoints) keeps those it has: they describe how the run
    began; those of an attempt that saved nothing (refused, or failed early) are replaced, and its
    ``failure.json`` removed."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not is_first_process():
        return
    hydra_cfg = HydraConfig.get()
    output_dir = Path(hydra_cfg.runtime.output_dir)
    folder = output_dir / CONFIG_DIR
    if (folder / "config.yaml").exists() and saved_checkpoints(output_dir):
        return
    (output_dir / FAILURE_FILE).unlink(missing_ok=True)
    folder.mkdir(parents=True, exist_ok=True)
    documents = {
        "config.yaml": cfg,
        "hydra.yaml": OmegaConf.create({"hydra": hydra_cfg}),
        "overrides.yaml": hydra_cfg.overrides.task,
    }
    for name, document in documents.items():
        write_atomically(folder / name, OmegaConf.to_yaml(document))
