"""Training runs that several test files evaluate, trained once per test session.

Import a fixture into a test file (``from tests.default_run import default_run  # noqa: F401``).
pytest makes one fixture per importing file, and each pytest-xdist worker has its own session,
so the runs are cached on disk instead: in the session's temporary directory that all workers
share, behind a file lock, reused once their ``metrics.json`` exists. A run that fails is not
cached; the next test that asks for it trains again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# `python train.py` as the README gives it; the progress bar only fills the captured output.
DEFAULT_RUN = ("trainer.enable_progress_bar=false",)
# A checkpoint in seconds: 2 steps of 32 images, a narrow expander, no loader processes, and the
# generic LARS preset: digits' base_lr 3.2 (conf/optim/digits.yaml) is tuned for its full schedule,
# and two steps at lr 1.6 leave weights whose 20-NN votes tie closely enough that float rounding
# (two DDP ranks against one process) turned one image of 360.
TINY_RUN = (
    "trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.batch_size=32", "model.expander=64-64",
    "data.num_workers=0", "trainer.enable_progress_bar=false", "optim=lars", "optim.warmup_epochs=0",
)

def trained_run(tmp_path_factory: pytest.TempPathFactory, name: str, overrides: tuple[str, ...],
                timeout: float = 900) -> Path:
    """The run directory of ``python train.py <overrides>``, trained at most once per session."""
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
            proc = subprocess.run(
                [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"],
                capture_output=True, text=True, timeout=timeout, cwd=ROOT,
            )
            assert proc.returncode == 0, f"train.py {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}"
            (run_dir / "train_seconds.txt").write_text(f"{time.monotonic() - start:.1f}\n")
    return run_dir


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python train.py``: the embedded digits, ResNet-10, 20 epochs (minutes on 2 CPU cores)."""
    return trained_run(tmp_path_factory, "default", DEFAULT_RUN)


@pytest.fixture(scope="session")
def tiny_digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default run's model (ResNet-10, ImageNet stem) after 2 steps, with the k-NN monitor
    (whose val/knn_acc1 tests compare with eval.py's)."""
    return trained_run(tmp_path_factory, "tiny_digits",
                       (*TINY_RUN, "+callbacks.knn_monitor._target_=vicreg_lightning.callbacks.knn_monitor.KNNMonitor"))


@pytest.fixture(scope="session")
def tiny_resnet18_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-18 with the small-image (3x3, no max-pool) stem after 2 steps on digits, on 16-px crops
    (that stem costs 10x the default model per image): one validation batch, no health check."""
    return trained_run(tmp_path_factory, "tiny_resnet18", (
        *TINY_RUN, "model.backbone=resnet18", "model.small_stem=true", "trainer.limit_val_batches=1",
        "augment.size=16", "augment.val_resize=16",
        "callbacks.representation_health=null",
    ))
