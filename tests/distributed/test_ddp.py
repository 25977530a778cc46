"""DDP as users run it: ``train.py trainer=ddp`` with 2 CPU processes (gloo), against 1 process."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import torch

from tests import warm
from tests.runs import DDP, KNN_MONITOR, ONE_DEVICE, TINY, TINY_RUN, TINY_VIT, train, train_here, weights


def finished(proc: subprocess.CompletedProcess, run_dir: Path) -> dict[str, float]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((run_dir / "metrics.json").read_text())


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


# Float32 sums in another order (two ranks, gloo) after 2 LARS steps: measured ~1e-6 after 4.
TOLERANCE = 1e-4


def test_two_devices_train_like_one_on_the_same_global_batch(tiny_ddp_run, tmp_path):
    # Random augmentation on: each sample's views are the same on one device and on two
    # (tests/unit/test_sampler.py compares the views themselves).
    one, two, two_unsynced = tmp_path / "one", tiny_ddp_run, tmp_path / "two_unsynced"
    metrics_one = finished(train_here(*TINY_RUN, *ONE_DEVICE, KNN_MONITOR, f"hydra.run.dir={one}"), one)
    metrics_two = json.loads((two / "metrics.json").read_text())

    assert metrics_two["step"] == metrics_one["step"] == 2
    difference = max_difference(weights(one), weights(two))
    assert difference < TOLERANCE, f"devices=2 vs devices=1: max parameter difference {difference:.2e}"
    # Validation is split over the ranks without padding and the probe metrics are synchronised:
    # the same numbers as one process on the whole validation set.
    assert metrics_two["val/probe_acc1"] == pytest.approx(metrics_one["val/probe_acc1"], abs=1e-6)
    assert metrics_two["val/probe_acc5"] == pytest.approx(metrics_one["val/probe_acc5"], abs=1e-6)
    assert metrics_two["val/probe_loss"] == pytest.approx(metrics_one["val/probe_loss"], rel=1e-4)
    # One run directory, written by rank 0 alone: nothing beside it named like Hydra's default run
    # directories (<date>_<time>), and Hydra's files and the checkpoints once.
    assert not [p.name for p in two.parent.iterdir() if p.name[:1].isdigit()]
    assert sorted(p.name for p in (two / ".hydra").iterdir()) == ["config.yaml", "hydra.yaml", "overrides.yaml"]
    assert {p.name for p in (two / "checkpoints").iterdir()} == {"last.ckpt", "best-epoch000.ckpt"}

    # The comparison can fail: without SyncBatchNorm each rank normalises with half the batch.
    finished(train(*TINY_RUN, *DDP, KNN_MONITOR, "trainer.sync_batchnorm=false",
                   f"hydra.run.dir={two_unsynced}"), two_unsynced)
    assert max_difference(weights(one), weights(two_unsynced)) > 100 * TOLERANCE


@pytest.mark.parametrize("micro_batch_size", ["null", "8"], ids=["one-pass", "2-micro-batches-per-rank"])
def test_a_vit_trains_on_two_devices_like_on_one(tiny_vit_run, tmp_path, micro_batch_size):
    """No SyncBatchNorm in the ViT (it has none; the expander's is synced) and no search for unused
    parameters: 2 gloo ranks give the one-process weights; so do 2 ranks that each encode their 16
    samples in 2 micro-batches (each rank's own samples, against the one process's whole batch)."""
    two = tmp_path / "two"
    metrics = finished(train(*TINY_RUN, *TINY_VIT, *DDP, f"data.micro_batch_size={micro_batch_size}",
                             f"hydra.run.dir={two}"), two)
    assert metrics["step"] == 2
    difference = max_difference(weights(tiny_vit_run), weights(two))
    assert difference < TOLERANCE, f"ViT, devices=2 vs devices=1: max parameter difference {difference:.2e}"


def test_ddp_multirun_gives_each_job_one_directory(tmp_path):
    sweep = tmp_path / "sweep"
    proc = train("-m", *TINY, *DDP, "loss.cov_coeff=1,2", f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job, coeff in (("0", 1), ("1", 2)):
        metrics = json.loads((sweep / job / "metrics.json").read_text())
        assert metrics["step"] == 4
        assert f"loss.cov_coeff={coeff}" in (sweep / job / ".hydra" / "overrides.yaml").read_text()


def test_a_rank_that_dies_ends_the_job_with_an_error_in_bounded_time(tmp_path):
    run_dir = tmp_path / "run"
    start = time.monotonic()
    proc = train(*TINY, *DDP, "trainer.limit_train_batches=20",
                 "+callbacks.fail._target_=tests.helpers.FailOnRank", "+callbacks.fail.rank=1",
                 "+callbacks.fail.step=2", f"hydra.run.dir={run_dir}", timeout=300)
    assert proc.returncode != 0
    assert time.monotonic() - start < 120
    assert not (run_dir / "metrics.json").exists()


@pytest.mark.skipif(os.environ.get("VICREG_LONG_TESTS") != "1", reason="~9 min on 2 cores: VICREG_LONG_TESTS=1")
def test_default_digits_run_on_two_devices_matches_one_device(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    metrics_one = finished(train("trainer.enable_progress_bar=false", f"hydra.run.dir={one}"), one)
    metrics_two = finished(train(*DDP, "trainer.enable_progress_bar=false", f"hydra.run.dir={two}"), two)
    assert {p.name for p in tmp_path.iterdir()} == {"one", "two"}  # one run directory per run
    assert abs(metrics_two["val/probe_acc1"] - metrics_one["val/probe_acc1"]) <= 0.02


def test_a_global_batch_that_does_not_divide_over_the_devices_is_refused_once(tmp_path):
    proc = train(*TINY, *DDP, "data.batch_size=33", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: data.batch_size=33: the global batch must divide evenly over 2 devices; use a multiple of 2"]


def test_two_nodes_of_one_process_train_like_one_node_of_two(tiny_ddp_run, tmp_path):
    # Many nodes as Lightning sees them: each process one node (NODE_RANK), started by hand as a
    # scheduler would start them, meeting at MASTER_ADDR:MASTER_PORT. (SLURM's many-node jobs: one
    # slurmd per host in Debian's build, so not on this machine.)
    import socket
    import sys

    from tests.runs import ROOT

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run_dir = tmp_path / "run"
    procs = [warm.popen(
        [sys.executable, str(ROOT / "train.py"), *TINY_RUN, *DDP, KNN_MONITOR, "trainer.devices=1",
         "trainer.num_nodes=2", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture=True, merge=True,
        env={**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "WORLD_SIZE": "2",
             "NODE_RANK": str(node), "LOCAL_RANK": "0"}) for node in (0, 1)]
    outputs = [proc.communicate(timeout=300)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 2
    difference = max_difference(weights(tiny_ddp_run), weights(run_dir))
    # The same two ranks and batches; only the summation order of gloo's all-reduce may differ.
    assert difference < 1e-6, f"2 nodes x 1 device vs 1 node x 2 devices: max parameter difference {difference:.2e}"
