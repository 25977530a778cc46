"""How tests start runs and build configs: ``train.py`` in a subprocess, the composed config
in-process, small runs' overrides, and the runs that several test files evaluate, trained once per
test session (:func:`trained_run`; the fixtures are in conftest.py). Shared by the test modules
(none of which imports another)."""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from tests import warm
from vicreg_lightning.config import register_schemas

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# A run in seconds (conf/experiment/smoke.yaml).
TINY = ["experiment=smoke"]
# The smoke run over 2 epochs of 4 steps, with a persistent loader worker as the digits preset has.
TWO_EPOCHS = [*TINY, "data.num_workers=1", "trainer.max_epochs=2", "trainer.log_every_n_steps=1"]


def train(*overrides: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python train.py <overrides>`` in a process of its own (:mod:`tests.warm`), with ``env``
    added to the environment."""
    return warm.run([sys.executable, str(ROOT / "train.py"), *overrides], timeout=timeout, cwd=ROOT,
                    env={**os.environ, **(env or {})})


def train_here(*overrides: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python train.py <overrides>`` run by this process: the entry point ``train.py`` calls, with
    the same composition, checks, output and exit code, without the seconds a new interpreter pays
    to import torch and Lightning. For runs that need no process of their own: no signals, no DDP
    ranks, no ``-m`` launcher. The process's environment, logging, working directory and Hydra's
    global state are as they were afterwards."""
    from hydra.core.global_hydra import GlobalHydra

    from vicreg_lightning import cli

    argv = [str(ROOT / "train.py"), *overrides]
    saved_env, saved_argv, saved_cwd = dict(os.environ), sys.argv, os.getcwd()
    root_logger = logging.getLogger()
    saved_handlers, saved_level = list(root_logger.handlers), root_logger.level
    deterministic = torch.are_deterministic_algorithms_enabled()
    stdout, stderr, code = io.StringIO(), io.StringIO(), 0
    os.environ.update(env or {})
    sys.argv = argv
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            cli.train()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    except Exception:  # noqa: BLE001 - a traceback, as the interpreter would print it
        stderr.write(traceback.format_exc())
        code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        for handler in set(root_logger.handlers) - set(saved_handlers):
            handler.close()
        root_logger.handlers[:] = saved_handlers
        root_logger.setLevel(saved_level)
        torch.use_deterministic_algorithms(deterministic)
        GlobalHydra.instance().clear()
    return subprocess.CompletedProcess(argv, code, stdout.getvalue(), stderr.getvalue())


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without SLURM_*/SUBMITIT_* variables: submitit's local executor passes
    its own environment on, and a SLURM_NTASKS inherited from a CI job would make Lightning take
    the local job for a SLURM task."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SUBMITIT_"))}
    env.update(HYDRA_FULL_ERROR="1", **extra)
    return env


def multirun(*overrides: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``train.py -m ...`` in its own process group: submitit's local jobs are further processes,
    which a timeout must not leave running."""
    args = [sys.executable, str(ROOT / "train.py"), "-m", *overrides]
    try:
        return warm.run(args, cwd=ROOT, env=env, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired as expired:
        return subprocess.CompletedProcess(args, -signal.SIGKILL, expired.stdout or "",
                                           f"{expired.stderr or ''}\n[killed after {timeout} s]")


def tail(proc: subprocess.CompletedProcess, chars: int = 4000) -> str:
    return f"exit code {proc.returncode}\n--- stdout ---\n{proc.stdout[-chars:]}\n--- stderr ---\n{proc.stderr[-chars:]}"


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The state dict of ``<run_dir>/checkpoints/last.ckpt``."""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def compose_train(*overrides: str):
    """``conf/train.yaml`` composed with ``overrides``, as ``train.py`` composes it (not checked)."""
    register_schemas()  # what importing the conf package does for train.py; a folder path imports nothing
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def compose_eval(*overrides: str):
    """``conf/eval.yaml`` composed with ``overrides``, as ``eval.py`` composes it (not checked)."""
    register_schemas()
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("eval", overrides=list(overrides))


def random_init_export(trained_export: Path, folder: Path) -> Path:
    """The trained export's sidecar (same architecture, data, augmentations) with the weights of a
    freshly initialised backbone of the same architecture, seeded: the baseline a trained encoder
    must beat, evaluated the same way."""
    from vicreg_lightning.export import build_from_info

    info = json.loads((trained_export / "vicreg.json").read_text())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        backbone, _ = build_from_info(info)
    folder.mkdir()
    torch.save(backbone.module.state_dict(), folder / "backbone.pt")
    (folder / "vicreg.json").write_text(json.dumps(info | {"metrics": None, "checkpoint": None}))
    return folder


def shrink(root: Path, output_dir: Path) -> list[str]:
    """Overrides that keep a preset's architecture and recipe but make it run in seconds."""
    return [
        f"data.root={root}", "data.download=false", "data.batch_size=8", "data.num_workers=0",
        "augment.size=32", "augment.val_resize=36", "augment.blur_kernel_size=3", "model.expander=64-32",
        "trainer.max_epochs=1", "optim.warmup_epochs=0", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        f"paths.output_dir={output_dir}",
    ]


def configs(name: str, root: str = "", size: int = 16, batch_size: int = 4, **data):
    """``(data, augment)`` sections for a data module built in-process, without loader workers: the
    ``data=<name>`` preset (not downloading unless asked) and ``augment=official`` at ``size`` px."""
    data = {"num_workers": 0, "download": False, **data, "root": root, "batch_size": batch_size}
    cfg = compose_train("~experiment", f"data={name}", "augment=official", "paths.output_dir=unused",
                        *(f"data.{key}={value!r}" if isinstance(value, str) else f"data.{key}={value}"
                          for key, value in data.items()),
                        f"augment.size={size}", f"augment.val_resize={size}", "augment.blur_kernel_size=3")
    return cfg.data, cfg.augment


# `python train.py` as the README gives it; the progress bar only fills the captured output.
DEFAULT_RUN = ("trainer.enable_progress_bar=false",)
# A checkpoint in seconds: the smoke preset (its generic LARS: digits' base_lr 3.2 is tuned for its
# full schedule, and two steps at lr 1.6 leave weights whose 20-NN votes tie closely enough that
# float rounding, two DDP ranks against one process, turned one image of 360), 2 steps.
TINY_RUN = ("experiment=smoke", "trainer.limit_train_batches=2")
# A small timm ViT (width 192, 2 blocks, 8-px patches of the 32-px crops) for the tiny runs.
TINY_VIT = ("model=vit_tiny_32", "model.backbone_kwargs.patch_size=8", "+model.backbone_kwargs.depth=2")
ONE_DEVICE = ("trainer.accelerator=cpu", "trainer.devices=1")
# DDP on 2 CPU processes (gloo), and the k-NN monitor (whose val/knn_acc1 tests compare with eval's).
DDP = ("trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
KNN_MONITOR = "+callbacks.knn_monitor._target_=vicreg_lightning.callbacks.knn_monitor.KNNMonitor"
# The SLURM commands for CPU nodes of docs/scaling-out.md, as tests/distributed/test_slurm.py runs them on its cluster.
SLURM_CPU_SWEEP = ("hydra/launcher=slurm", "hydra.launcher.partition=cpu", "trainer.accelerator=cpu", "loss.cov_coeff=1,2")
SLURM_CPU_RECIPE = ROOT / "scripts" / "slurm" / "train_cpu.sbatch"


def trained_run(tmp_path_factory: pytest.TempPathFactory, name: str, overrides: tuple[str, ...],
                timeout: float = 900) -> Path:
    """The run directory of ``python train.py <overrides>``, trained at most once per session (in
    this process, :func:`train_here`, unless its DDP ranks need processes of their own).

    pytest makes a session fixture per xdist worker, so the runs are cached on disk: in the
    session's temporary directory that all workers share, behind a file lock, reused once their
    ``metrics.json`` exists. A run that fails is not cached; the next test that asks for it trains
    again."""
    base = tmp_path_factory.getbasetemp()
    # Under xdist every worker's base is a sub-folder of the session's.
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    run_dir = shared / "runs" / name
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(shared / "runs" / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (run_dir / "metrics.json").exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            start = time.monotonic()
            if DDP[0] in overrides:  # its ranks are processes of their own
                proc = train(*overrides, f"hydra.run.dir={run_dir}", timeout=timeout)
            else:
                proc = train_here(*overrides, f"hydra.run.dir={run_dir}")
            assert proc.returncode == 0, f"train.py {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}"
            (run_dir / "train_seconds.txt").write_text(f"{time.monotonic() - start:.1f}\n")
    return run_dir
