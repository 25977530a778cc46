"""Checkpoint files stay whole: a failed or killed write leaves the previous checkpoint loadable,
also when the run directory is on another file system than the temporary directory."""

from __future__ import annotations

import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from tests.runs import ROOT, TWO_EPOCHS, train_here, weights
from vicreg_lightning import checkpoint_io
from vicreg_lightning.checkpoint_io import AtomicCheckpointIO
from vicreg_lightning.errors import NoSpaceForCheckpoint
from vicreg_lightning.train import build_trainer


def checkpoint(version: int, megabytes: float) -> dict:
    return {"version": version, "weights": torch.full((int(megabytes * 2**18),), float(version))}


def assert_whole(path: Path, version: int) -> None:
    loaded = torch.load(path, weights_only=True)
    assert loaded["version"] == version
    assert torch.equal(loaded["weights"], torch.full_like(loaded["weights"], float(version)))


def test_a_write_that_fails_midway_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(checkpoint(1, 0.5), path)

    def half_then_disk_full(obj, f):
        f.write(b"PK\x03\x04" + b"\0" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint_io.torch, "save", half_then_disk_full)
    with pytest.raises(NoSpaceForCheckpoint, match="no space left .* to save last.ckpt .* kept whole"):
        AtomicCheckpointIO().save_checkpoint(checkpoint(2, 0.5), path)
    monkeypatch.undo()
    assert_whole(path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"], "a temporary file was left behind"


@contextmanager
def tmpfs(size_kib: int):
    """A tmpfs of ``size_kib``: another file system than the temporary directory, one that fills up."""
    mount_point = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs", str(mount_point)],
                          capture_output=True)
    if proc.returncode != 0:
        shutil.rmtree(mount_point)
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()}); needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)
        mount_point.rmdir()


@pytest.fixture
def small_file_system():
    with tmpfs(3 * 1024) as mount_point:
        yield mount_point


QUIET = ("logger=none", "trainer.enable_progress_bar=false")


def test_a_run_whose_disk_fills_says_so_in_one_line_keeps_its_checkpoints_and_resumes(two_epoch_run, tmp_path):
    # Room for the first epoch's two checkpoints (best and last) and half of a third: the second
    # epoch's first save fails.
    size = (two_epoch_run / "checkpoints" / "last.ckpt").stat().st_size
    with tmpfs(int(2.5 * size) // 1024) as disk:
        run_dir = disk / "run"
        full = train_here(*TWO_EPOCHS, *QUIET, f"hydra.run.dir={run_dir}")
        lines = full.stderr.strip().splitlines()
        assert full.returncode == 2, full.stderr[-3000:]
        assert len(lines) == 1 and lines[0].startswith("error: no space left on the file system of"), full.stderr
        assert "kept whole: free space, then continue with ckpt_path=last" in lines[0]
        assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
        assert torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4
        assert not (run_dir / "metrics.json").exists()
        shutil.copytree(run_dir, tmp_path / "run")  # freed: a disk with room
    resumed = train_here(*TWO_EPOCHS, *QUIET, "ckpt_path=last", f"hydra.run.dir={tmp_path / 'run'}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["step"] == 8
    straight, after_the_full_disk = weights(two_epoch_run), weights(tmp_path / "run")
    assert all(torch.equal(straight[name], after_the_full_disk[name]) for name in straight)


def test_a_full_disk_on_another_file_system_leaves_the_previous_checkpoint(small_file_system, tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the staging directory of Lightning's writer
    monkeypatch.setattr(tempfile, "tempdir", None)
    ours, theirs = small_file_system / "ours.ckpt", small_file_system / "theirs.ckpt"
    for writer, path in ((AtomicCheckpointIO(), ours), (TorchCheckpointIO(), theirs)):
        writer.save_checkpoint(checkpoint(1, 0.5), path)
    assert os.stat(small_file_system).st_dev != os.stat(tmp_path).st_dev

    with pytest.raises((OSError, RuntimeError)):  # torch reports the full disk as a RuntimeError
        AtomicCheckpointIO().save_checkpoint(checkpoint(2, 4), ours)
    assert_whole(ours, 1)
    assert sorted(p.name for p in small_file_system.iterdir()) == ["ours.ckpt", "theirs.ckpt"]

    # Negative control: Lightning's own writer in the same place loses the previous checkpoint.
    ours.unlink()
    with pytest.raises(Exception):
        TorchCheckpointIO().save_checkpoint(checkpoint(2, 4), theirs)
    with pytest.raises(Exception):
        assert_whole(theirs, 1)


SAVE_FOREVER = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from vicreg_lightning.run_dir import replace_atomically
    path = Path(sys.argv[1])
    for version in range(1000):
        checkpoint = {"version": version, "weights": torch.full((8_000_000,), float(version))}
        replace_atomically(path, lambda f: torch.save(checkpoint, f))
        print(version, flush=True)
""")


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    # A process that does nothing but save 32 MB checkpoints as AtomicCheckpointIO does (through
    # replace_atomically, without importing Lightning: four process starts), killed at random
    # moments; the file lies on another file system than the temporary directory when /dev/shm is
    # a tmpfs.
    folder = Path(tempfile.mkdtemp(dir="/dev/shm")) if os.path.isdir("/dev/shm") else tmp_path
    path = folder / "last.ckpt"
    rng = random.Random(0)
    versions = []
    try:
        for _ in range(4):
            proc = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(path)], stdout=subprocess.PIPE,
                                    text=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
            assert proc.stdout is not None
            # Two checkpoints are complete, so the kill lands while a later one is being written.
            proc.stdout.readline()
            proc.stdout.readline()
            time.sleep(rng.uniform(0.0, 0.3))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            loaded = torch.load(path, weights_only=True)
            assert_whole(path, loaded["version"])
            versions.append(loaded["version"])
    finally:
        if folder != tmp_path:
            shutil.rmtree(folder)
    assert min(versions) >= 1


def test_the_run_writes_its_checkpoints_through_the_atomic_writer(tmp_path):
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"paths.output_dir={tmp_path}", "trainer.accelerator=cpu"])
    assert type(build_trainer(cfg, loggers=[]).strategy.checkpoint_io) is AtomicCheckpointIO
