"""The sweep loop as users drive it: W&B (offline), grid and Optuna sweeps, the sweep summary."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests import warm
from tests.runs import ROOT, TINY, train
from tests.wandb_records import read_offline_run
from vicreg_lightning.cli import sweep_summary

FAST_LOGS = ["trainer.log_every_n_steps=1", "callbacks.representation_health.every_n_steps=2"]


OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
# One worker for the module: its grid sweep (a module fixture) is then run once, not once per worker.
pytestmark = pytest.mark.xdist_group("sweeps")


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))


@pytest.fixture(scope="module")
def grid_sweep(tmp_path_factory) -> Path:
    sweep = tmp_path_factory.mktemp("grid") / "sweep"
    proc = train("-m", *TINY, *FAST_LOGS, "logger=wandb", "loss.sim_coeff=10,25", "loss.std_coeff=10,25",
                 f"hydra.sweep.dir={sweep}", env=OFFLINE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def test_grid_sweep_runs_every_combination_each_with_its_own_wandb_run(grid_sweep):
    jobs = sorted(d for d in grid_sweep.iterdir() if d.is_dir())
    assert [d.name for d in jobs] == ["0", "1", "2", "3"]
    seen = set()
    for job in jobs:
        [run_file] = offline_runs(job)
        run = read_offline_run(run_file)
        sim, std = run.config["loss"]["sim_coeff"], run.config["loss"]["std_coeff"]
        seen.add((sim, std))
        # The whole composed config, the sweep as group, the job's overrides as tags.
        assert run.config["data"]["batch_size"] == 32 and run.config["optim"]["name"] == "lars"
        assert run.group == grid_sweep.name
        assert f"loss.sim_coeff={sim:g}" in run.tags and f"loss.std_coeff={std:g}" in run.tags
        # Every VICReg term, weighted and not, the probe, lr, throughput, health.
        for key in ("train/loss", "train/invariance", "train/variance_weighted", "train/covariance", "lr",
                    "train/samples_per_s", "train/epoch_time_s", "val/probe_acc1", "val/probe_acc5",
                    "health/embed_rankme", "health/feat_rankme", "health/embed_std_min"):
            assert run.logged(key), f"{key} not logged to W&B in job {job.name}"
        metrics = json.loads((job / "metrics.json").read_text())
        assert run.logged("val/probe_acc1")[-1] == pytest.approx(metrics["val/probe_acc1"])
        assert (job / "wandb_run_id.txt").read_text().strip() == run.run_id
    assert seen == {(10, 10), (10, 25), (25, 10), (25, 25)}


def test_sweep_summary_ranks_the_jobs_and_plots_each_swept_coefficient(grid_sweep, tmp_path, capsys):
    assert sweep_summary([str(grid_sweep), "--out", str(tmp_path)]) == 0
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert len(rows) == 4 and {r["status"] for r in rows} == {"finished"}
    objectives = [float(r["val/probe_acc1"]) for r in rows]
    assert objectives == sorted(objectives, reverse=True)
    assert {(r["loss.sim_coeff"], r["loss.std_coeff"]) for r in rows} == {("10", "10"), ("10", "25"), ("25", "10"),
                                                                          ("25", "25")}
    for row in rows:
        saved = json.loads((grid_sweep / row["job"] / "metrics.json").read_text())
        assert float(row["val/probe_acc1"]) == pytest.approx(saved["val/probe_acc1"])
    assert "| rank | job | status | loss.sim_coeff | loss.std_coeff |" in (tmp_path / "summary.md").read_text()
    for key in ("loss.sim_coeff", "loss.std_coeff"):
        assert (tmp_path / f"objective_vs_{key}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_optuna_search_reports_the_best_coefficients_and_survives_a_diverged_trial(tmp_path):
    sweep = tmp_path / "optuna"
    # Seed 1 draws optim.base_lr=1e30 (a certain NaN) for trial 1 of 3, and 0.3 for the others.
    proc = train("hparams_search=vicreg_optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.seed=1",
                 "optim.base_lr=choice(0.3,1e30)", *TINY, "trainer.log_every_n_steps=1",
                 f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    failure = json.loads((sweep / "1" / "failure.json").read_text())
    assert failure["status"] == "failed" and "non-finite" in failure["error"]
    assert "optim.base_lr=1e+30" in failure["overrides"]
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    finished = {job: json.loads((sweep / job / "metrics.json").read_text())["val/probe_acc1"] for job in ("0", "2")}
    assert result["best_value"] == pytest.approx(max(finished.values()))
    assert set(result["best_params"]) == {"loss.sim_coeff", "loss.std_coeff", "loss.cov_coeff", "optim.base_lr"}
    assert result["best_params"]["optim.base_lr"] == 0.3

    assert sweep_summary([str(sweep)]) == 0
    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [r["status"] for r in rows] == ["finished", "finished", "failed"]
    assert "non-finite" in rows[-1]["error"] and math.isnan(float(rows[-1]["val/probe_acc1"] or "nan"))


def test_wandb_at_an_unreachable_server_warns_and_training_finishes(tmp_path):
    run_dir = tmp_path / "run"
    unreachable = {"WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40, "WANDB_BASE_URL": "http://127.0.0.1:9"}
    proc = train(*TINY, "logger=wandb", "logger.wandb.init_timeout=3", f"hydra.run.dir={run_dir}",
                 env=unreachable)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "W&B could not start" in proc.stderr
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 4
    assert (run_dir / "csv" / "metrics.csv").exists()  # local logging went on


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
    run_dir = tmp_path / "run"
    two_epochs = [*TINY, "trainer.max_epochs=2", "logger=wandb", f"hydra.run.dir={run_dir}"]
    first = train(*two_epochs, "+callbacks.stop._target_=tests.helpers.SignalAtStep", "+callbacks.stop.step=4",
                  env=OFFLINE)
    assert first.returncode == 143, first.stderr[-3000:]
    assert "wandb sync" in first.stdout
    second = train(*two_epochs, "ckpt_path=last", env=OFFLINE)
    assert second.returncode == 0, second.stderr[-3000:]
    runs = [read_offline_run(path) for path in offline_runs(run_dir)]
    assert len(runs) == 2 and runs[0].run_id == runs[1].run_id


def test_a_stored_optuna_search_killed_after_its_first_trial_continues_the_same_study(tmp_path):
    import optuna

    sweep, storage = tmp_path / "optuna", f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, str(ROOT / "train.py"), "hparams_search=vicreg_optuna", "hydra.sweeper.n_trials=3",
               f"hydra.sweeper.storage={storage}", *TINY, "callbacks.representation_health=null",
               "callbacks.search_pruning=null", "hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2",
               f"hydra.sweep.dir={sweep}"]
    search = warm.popen(command, cwd=ROOT, start_new_session=True)
    deadline = time.monotonic() + 300
    while not (sweep / "1").exists() and search.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(search.pid, signal.SIGKILL)  # during the second trial
    search.wait()
    assert (sweep / "0" / "metrics.json").exists() and not (sweep / "1" / "metrics.json").exists()

    again = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"study 'vicreg' in {storage}: 2 trials so far (1 finished, 1 running or waiting), n_trials=3" in again.stdout
    trials = optuna.load_study(study_name="vicreg", storage=storage).trials
    # Trial 1, cut short, is failed once its heartbeat is stale and run again as trial 2 (same parameters);
    # trial 3 completes the 3 trials.
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    assert trials[2].system_attrs["failed_trial"] == 1 and trials[2].params == trials[1].params
    # The resumed search samples afresh: no earlier parameters replayed (a sampler re-created with the
    # first attempt's seed would draw trial 0's again).
    assert len({tuple(sorted(t.params.items())) for t in (trials[0], trials[1], trials[3])}) == 3
    assert all((sweep / job / "metrics.json").exists() for job in ("0", "2", "3"))
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == max(t.value for t in trials if t.value is not None)


def test_sigterm_in_a_grid_jobs_last_validation_ends_the_sweep_after_that_job(tmp_path):
    sweep = tmp_path / "sweep"
    proc = train("-m", *TINY, "loss.cov_coeff=1,2", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
                 "+callbacks.kill._target_=tests.helpers.SignalDuringValidation", "+callbacks.kill.epoch=1",
                 f"hydra.sweep.dir={sweep}")
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "stopped (SIGTERM) after job 0 finished; its results are saved" in proc.stderr
    assert json.loads((sweep / "0" / "metrics.json").read_text())["epoch"] == 2
    assert not (sweep / "1").exists()  # the next job never started
