"""The project installs as a library: a wheel built from the repository, installed (not editable)
into a fresh virtual environment, trains from an empty directory with its console script, with the
configs it ships and a user's own presets from --config-dir."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from tests.runs import ROOT

TINY = ["experiment=smoke", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "callbacks.representation_health=null"]


@pytest.mark.slow
def test_a_wheel_in_a_fresh_environment_trains_from_an_empty_directory(tmp_path):
    # Built from a copy: the build leaves build/ and *.egg-info beside the sources.
    source, dist = tmp_path / "source", tmp_path / "dist"
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "outputs", "*.egg-info", "__pycache__", ".pytest_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
                    str(source)], check=True, capture_output=True, timeout=300)
    wheel = next(dist.glob("vicreg_lightning-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # The dependencies come from this environment (nothing is downloaded); the project from the wheel.
    site = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)

    empty = tmp_path / "empty"
    (empty / "presets" / "optim").mkdir(parents=True)
    # A user's own preset, beside the shipped ones, without editing the package.
    (empty / "presets" / "optim" / "mine.yaml").write_text("defaults:\n  - lars\n  - _self_\nbase_lr: 0.123\nwarmup_epochs: 0\n")
    proc = subprocess.run([str(venv / "bin" / "vicreg-train"), "--config-dir", "presets", "optim=mine", *TINY],
                          cwd=empty, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = (empty / "outputs" / "train" / "runs").iterdir()
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 2
    assert "base_lr: 0.123" in (run_dir / ".hydra" / "config.yaml").read_text()
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import vicreg_lightning; print(vicreg_lightning.__file__)"],
                           cwd=empty, check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(venv)), where
