"""Resume and preemption as users meet them: ``train.py`` stopped and started again."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from tests.test_ddp import ROOT, TINY, train, weights

# Random augmentation stays on: the resumed run must draw what the uninterrupted one drew.
TWO_EPOCHS = [*TINY, "trainer.max_epochs=2", "trainer.deterministic=true"]
STOP_AFTER_FIRST_EPOCH = ["+callbacks.stop._target_=tests.helpers.StopAfterEpoch", "+callbacks.stop.epoch=1"]
SIGTERM_AT_STEP_6 = ["+callbacks.kill._target_=tests.helpers.SignalAtStep", "+callbacks.kill.step=6"]


def test_run_stopped_after_an_epoch_and_resumed_ends_with_the_same_weights(tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train(*TWO_EPOCHS, f"hydra.run.dir={straight}").returncode == 0
    # last.ckpt is the last epoch's, whether or not the probe improved in it.
    last = torch.load(straight / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert last["global_step"] == 8

    first = train(*TWO_EPOCHS, *STOP_AFTER_FIRST_EPOCH, f"hydra.run.dir={resumed}")
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((resumed / "metrics.json").read_text())["step"] == 4
    second = train(*TWO_EPOCHS, "ckpt_path=last", f"hydra.run.dir={resumed}")
    assert second.returncode == 0, second.stderr[-3000:]

    assert json.loads((resumed / "metrics.json").read_text())["step"] == 8
    a, b = weights(straight), weights(resumed)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"resumed run differs from the uninterrupted one in {different[:5]}"


def test_sigterm_saves_a_checkpoint_and_the_run_resumes_from_it(tmp_path):
    run_dir = tmp_path / "run"
    stopped = train(*TWO_EPOCHS, *SIGTERM_AT_STEP_6, f"hydra.run.dir={run_dir}")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "ckpt_path=last" in stopped.stderr
    assert not (run_dir / "metrics.json").exists()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 6

    resumed = train(*TWO_EPOCHS, "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 8 and metrics["epoch"] == 2


def test_ckpt_path_last_in_a_new_run_directory_starts_from_scratch(tmp_path):
    run_dir = tmp_path / "run"
    proc = train(*TINY, "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no checkpoint" in proc.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 4


SAVE_FOREVER = textwrap.dedent("""
    import sys, torch
    from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
    io, path = TorchCheckpointIO(), sys.argv[1]
    for version in range(1000):
        io.save_checkpoint({"version": version, "weights": torch.full((8_000_000,), float(version))}, path)
        print(version, flush=True)
""")


def test_a_process_killed_while_saving_leaves_the_previous_checkpoint_loadable(tmp_path):
    # The Trainer saves through TorchCheckpointIO (temporary file, then rename): kill a process
    # that does nothing but save 32 MB checkpoints, at random moments, and load what is left.
    path = tmp_path / "last.ckpt"
    rng = random.Random(0)
    versions = []
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", SAVE_FOREVER, str(path)], stdout=subprocess.PIPE, text=True,
                                cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert proc.stdout is not None
        # Two checkpoints are complete, so the kill lands while a later one is being written
        # (the process does nothing but write) and the file must still hold a whole older one.
        proc.stdout.readline()
        proc.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        checkpoint = torch.load(path, weights_only=True)
        assert torch.equal(checkpoint["weights"], torch.full((8_000_000,), float(checkpoint["version"])))
        versions.append(checkpoint["version"])
    assert min(versions) >= 1


def test_the_trainer_writes_checkpoints_through_the_atomic_writer():
    import lightning.pytorch as pl

    assert type(pl.Trainer(accelerator="cpu", logger=False).strategy.checkpoint_io) is TorchCheckpointIO


def test_requeue_signal_saves_a_checkpoint_before_the_waiting_handler_requeues(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "requeued"
    stopped = train(*TWO_EPOCHS, "+callbacks.requeue._target_=tests.helpers.StandInRequeueHandler",
                    f"+callbacks.requeue.marker={marker}", *SIGTERM_AT_STEP_6, "+callbacks.kill.signal_name=SIGUSR2",
                    f"hydra.run.dir={run_dir}")
    assert stopped.returncode != 0
    assert marker.read_text().startswith("requeued")
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 6
