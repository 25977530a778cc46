"""A run directory's claim refuses to overwrite saved work, and the CSV log keeps earlier attempts."""

from __future__ import annotations

import csv
import os
import subprocess

import pytest

from vicreg_lightning.errors import ConfigError
from vicreg_lightning.patches import HistoryKeepingCSVLogger
from vicreg_lightning.run_dir import claim, replace_atomically


def test_claim_refuses_to_overwrite_saved_work(tmp_path):
    assert claim(tmp_path, None) and claim(tmp_path, "last")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    with pytest.raises(ConfigError, match="checkpoints of an unfinished run; resume it with ckpt_path=last"):
        claim(tmp_path, None)
    assert claim(tmp_path, "last")
    slurm = tmp_path / "slurm"
    slurm.mkdir()
    (slurm / "hpc_ckpt_1.ckpt").write_bytes(b"weights")  # Lightning's SLURM requeue checkpoint
    with pytest.raises(ConfigError, match="checkpoints of an unfinished run"):
        claim(slurm, None)
    (tmp_path / "metrics.json").write_text("{}")
    assert claim(tmp_path, "last") is False
    for ckpt_path in (None, str(tmp_path / "checkpoints" / "last.ckpt")):
        with pytest.raises(ConfigError, match="already holds a finished run"):
            claim(tmp_path, ckpt_path)


def test_the_csv_log_keeps_earlier_attempts_and_drops_the_steps_logged_again(tmp_path):
    def attempt(steps: range, attempt: int) -> None:
        logger = HistoryKeepingCSVLogger(tmp_path, name="csv", version="")
        for step in steps:
            logger.log_metrics({"train/loss": float(step), f"attempt{attempt}": 1.0}, step=step)
        logger.save()

    attempt(range(10), attempt=1)  # cut short after step 9; its checkpoint was taken after step 5
    attempt(range(6, 12), attempt=2)  # the resumed attempt logs steps 6 and later again
    with open(tmp_path / "csv" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["step"]) for row in rows] == list(range(12))
    assert all(float(row["train/loss"]) == int(row["step"]) for row in rows)
    assert [row["attempt1"] != "" for row in rows] == [True] * 6 + [False] * 6
    assert [row["attempt2"] != "" for row in rows] == [False] * 6 + [True] * 6



def ended_pid() -> int:
    """The pid of a process that has ended and been reaped."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_write_removes_the_temporary_file_of_a_writer_killed_mid_write_and_keeps_a_live_ones(tmp_path):
    target = tmp_path / "last.ckpt"
    killed = tmp_path / f".last.ckpt.tmp-{ended_pid()}"
    live = tmp_path / f".last.ckpt.tmp-{os.getppid()}"  # a writer still running
    other = tmp_path / f".best.ckpt.tmp-{ended_pid()}"  # another file's: its own next write
    for stale in (killed, live, other):
        stale.write_bytes(b"half a checkpoint")
    replace_atomically(target, lambda f: f.write(b"whole"))
    assert target.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name, other.name])
