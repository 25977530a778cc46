"""The Optuna search engine (vicreg_lightning/hparams_search) on real searches: parallel workers,
label-free pruning, a killed worker, a metric typo. How much faster 2 workers are than 1 is
measured by benchmarks/bench_search.py, not asserted here (this machine's cores are shared)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from omegaconf import OmegaConf
from optuna.trial import TrialState

from tests import warm
from tests.runs import CONF, ROOT, TINY, compose_train
from vicreg_lightning.cli import sweep_summary
from vicreg_lightning.errors import UserError
from vicreg_lightning.hparams_search.pruning import check_metric, logged_metrics
from vicreg_lightning.hparams_search.space import parse_space
from vicreg_lightning.hparams_search.study import (
    StudySettings,
    make_pruner,
    open_storage,
    open_study,
)
from vicreg_lightning.hparams_search.workers import available_devices, check_workers

pytestmark = pytest.mark.xdist_group("search")
optuna.logging.set_verbosity(optuna.logging.WARNING)

SEARCH = [sys.executable, "-m", "vicreg_lightning.hparams_search.workers"]


# 6 trials of 3 one-step epochs; the expander 64-1 is a planted collapse (RankMe exactly 1), pruned
# after the warm-up epoch; 64-64 trials are healthy (RankMe > 1.2 from the first step).
SMOKE_SEARCH = [*TINY, "hydra.sweeper.n_trials=6", "trainer.limit_train_batches=1", "trainer.limit_val_batches=2",
                "trainer.max_epochs=3", "callbacks.search_pruning.warmup_epochs=1",
                "callbacks.search_pruning.health_min=1.2", "callbacks.representation_health.num_samples=64",
                "model.expander=choice(64-64,64-1)"]


def _settings(storage: str, **changes) -> StudySettings:
    return StudySettings(**{"study_name": "vicreg", "storage": storage, "direction": "maximize", "n_trials": 3,
                            "pruner": "none", "heartbeat_interval": 1, "grace_period": 2, "max_retry": 1, **changes})


def _search(sweep: Path, workers: int, *extra: str, **popen) -> subprocess.CompletedProcess | subprocess.Popen:
    command = [*SEARCH, "--workers", str(workers), *extra, f"hydra.sweep.dir={sweep}"]
    if popen:
        return warm.popen(command, cwd=ROOT, **popen)
    return warm.run(command, cwd=ROOT, timeout=600)


def _trials(sweep: Path) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name="vicreg", storage=f"sqlite:///{sweep / 'optuna.db'}").trials


@pytest.fixture(scope="module")
def smoke_search(tmp_path_factory) -> Path:
    """The 6-trial search on 2 workers: its sweep directory."""
    sweep = tmp_path_factory.mktemp("workers2") / "sweep"
    proc = _search(sweep, 2, *SMOKE_SEARCH)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return sweep


def test_bad_storage_study_pruner_metric_and_workers_are_refused_in_one_line(tmp_path):
    space = parse_space({"loss.sim_coeff": "interval(5, 50)"}, [])
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"not a database at all")
    for url, message in ((f"sqlite:///{tmp_path}/missing/optuna.db", "cannot create"),
                         (f"sqlite:///{corrupt}", "not a sqlite database"),
                         ("nosuchdb://host/x", "cannot be opened")):
        with pytest.raises(UserError, match=message) as error:
            open_storage(_settings(url))
        assert "\n" not in str(error.value)
    assert corrupt.read_bytes() == b"not a database at all"

    url = f"sqlite:///{tmp_path}/optuna.db"
    study = open_study(_settings(url), space, open_storage(_settings(url)))
    study.tell(study.ask(space.params), 0.5)
    before = (tmp_path / "optuna.db").read_bytes()
    other_space = parse_space({"loss.sim_coeff": "interval(5, 60)"}, [])
    for settings, other, message in ((_settings(url, direction="minimize"), space, "created to maximize"),
                                     (_settings(url), other_space, r"another space \(differs in: loss.sim_coeff\)")):
        with pytest.raises(UserError, match=message):
            open_study(settings, other, open_storage(settings))
    assert (tmp_path / "optuna.db").read_bytes() == before  # the stored study untouched
    assert len(open_study(_settings(url), space, open_storage(_settings(url))).trials) == 1

    with pytest.raises(UserError, match="pruner=hyperband: no such pruner; choose one of: none, median"):
        make_pruner("hyperband", 1)
    cfg = compose_train("hparams_search=vicreg_optuna", *TINY)
    with pytest.raises(UserError, match=r"optimized_metric=val/probe_acc: .*did you mean .*val/probe_acc1, "):
        check_metric(cfg, "optimized_metric", "val/probe_acc")
    check_metric(cfg, "callbacks.search_pruning.health_metric", cfg.callbacks.search_pruning.health_metric)
    devices, kind = available_devices()
    with pytest.raises(UserError, match=f"workers={devices + 1}: this machine has {devices} {kind}"):
        check_workers(devices + 1)
    with pytest.raises(UserError, match="not through hydra/launcher=slurm; drop one of them"):
        check_workers(2, "slurm")


def test_an_optimized_metric_typo_ends_the_command_before_training_with_the_study_untouched(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    params = OmegaConf.load(CONF / "hparams_search" / "vicreg_optuna.yaml").hydra.sweeper.params
    space = parse_space(OmegaConf.to_container(params), [])
    study = open_study(_settings(url), space, open_storage(_settings(url)))
    study.tell(study.ask(space.params), 0.5)
    before = (tmp_path / "optuna.db").read_bytes()
    proc = subprocess.run([*SEARCH, "--workers", "2", *TINY, "optimized_metric=val/probe_acc",
                           f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={tmp_path / 'sweep'}"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        "error: optimized_metric=val/probe_acc: the run logs no such metric; did you mean train/probe_acc1, "
        "val/probe_acc1, val/probe_acc1_best, val/probe_acc5?"]
    assert (tmp_path / "optuna.db").read_bytes() == before
    assert not list((tmp_path / "sweep").glob("0"))  # no trial started


def test_two_workers_share_the_trials_and_every_trial_has_its_run_directory(smoke_search):
    trials = _trials(smoke_search)
    assert len(trials) == 6 and {t.state for t in trials} <= {TrialState.COMPLETE, TrialState.PRUNED}
    for trial in trials:
        run_dir = smoke_search / str(trial.number)
        assert (run_dir / "metrics.json").is_file() and (run_dir / "checkpoints" / "last.ckpt").is_file()
        assert not (run_dir / "failure.json").exists()
        overrides = OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")
        assert {f"{key}={value}" for key, value in trial.params.items()} <= set(overrides)
    assert {t.user_attrs["worker"] for t in trials} == {0, 1}
    # At once, not in turns: a trial of one worker started before a trial of the other ended.
    assert any(a.user_attrs["worker"] != b.user_attrs["worker"] and a.datetime_start < b.datetime_complete
               and b.datetime_start < a.datetime_complete for a in trials for b in trials)
    # Every metric a run records is one that the search accepts as a name.
    recorded = json.loads((smoke_search / "0" / "metrics.json").read_text())
    assert set(recorded) <= logged_metrics(OmegaConf.load(smoke_search / "0" / ".hydra" / "config.yaml"))


def test_a_collapsing_trial_is_pruned_after_the_warm_up_and_healthy_ones_complete(smoke_search, tmp_path, capsys):
    sweep = smoke_search
    by_state = {TrialState.PRUNED: [], TrialState.COMPLETE: []}
    for trial in _trials(sweep):
        by_state[trial.state].append(trial)
        epochs = json.loads((sweep / str(trial.number) / "metrics.json").read_text())["epoch"]
        if trial.params["model.expander"] == "64-1":
            assert trial.state == TrialState.PRUNED
            # Collapsed from the first epoch, but pruned only once the warm-up epoch is over.
            assert trial.user_attrs["pruned_epoch"] == 2 and epochs == 2  # the run stopped: 2 epochs of 3
            assert trial.user_attrs["prune_reason"] == "health/embed_rankme=1 < 1.2 after epoch 2"
            assert trial.user_attrs["last_values"]["health/embed_rankme"] == pytest.approx(1.0)
        else:
            assert trial.state == TrialState.COMPLETE and epochs == 3
    assert by_state[TrialState.PRUNED] and by_state[TrialState.COMPLETE]
    assert sweep_summary([str(sweep), "--out", str(tmp_path)]) == 0
    rows = {row["job"]: row for row in __import__("csv").DictReader((tmp_path / "summary.csv").open())}
    for trial in _trials(sweep):
        row = rows[str(trial.number)]
        assert row["status"] == ("pruned" if trial.state == TrialState.PRUNED else "finished")
        assert row["pruned_epoch"] == ("2" if trial.state == TrialState.PRUNED else "")
    best = max((t for t in _trials(sweep) if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert f"Best: job {best.number}, " in (tmp_path / "summary.md").read_text()


def test_sigterm_in_a_trials_last_validation_records_the_finished_trial_and_stops_the_search(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _search(sweep, 1, *TINY, "hydra.sweeper.n_trials=3", "trainer.max_epochs=2", "trainer.limit_train_batches=2",
                   "callbacks.representation_health=null", "callbacks.search_pruning=null",
                   "+callbacks.kill._target_=tests.helpers.SignalDuringValidation", "+callbacks.kill.epoch=1")
    assert proc.returncode == 143, proc.stderr[-3000:]
    assert "stopped (SIGTERM) after trial 0 finished and was recorded" in proc.stderr
    [trial] = _trials(sweep)  # no second trial was started
    assert trial.state == TrialState.COMPLETE
    assert json.loads((sweep / "0" / "metrics.json").read_text())["epoch"] == 2


def test_a_worker_killed_mid_trial_leaves_a_failed_trial_that_is_retried_and_the_study_completes(tmp_path):
    sweep = tmp_path / "sweep"
    command = [*TINY, "hydra.sweeper.n_trials=3", "trainer.limit_train_batches=2", "hydra.sweeper.heartbeat_interval=1",
               "hydra.sweeper.grace_period=2", "callbacks.representation_health=null", "callbacks.search_pruning=null"]
    search = _search(sweep, 2, *command, capture=True)
    victim, deadline = None, time.monotonic() + 300
    while victim is None and search.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
        try:
            trials = _trials(sweep)
        except Exception:  # noqa: BLE001 - the study is not created yet
            continue
        for trial in trials:
            if (trial.state == TrialState.RUNNING and trial.user_attrs.get("worker") == 1
                    and (sweep / str(trial.number) / ".hydra").is_dir()):  # training has begun
                victim = trial
                os.kill(trial.user_attrs["pid"], signal.SIGKILL)
                break
    assert victim is not None
    stderr = search.communicate(timeout=600)[1]
    assert search.returncode == 1 and "worker 1 (exit code -9) stopped early" in stderr, stderr[-3000:]

    again = _search(sweep, 2, *command)
    assert again.returncode == 0, again.stderr[-3000:]
    trials = _trials(sweep)
    states = {t.number: t.state for t in trials}
    assert states[victim.number] == TrialState.FAIL
    [retry] = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and [t.number for t in trials if t.state == TrialState.FAIL] == [victim.number]
    assert len({tuple(sorted(t.params.items())) for t in done}) == 3  # no parameter set ran twice
    for trial in done:  # the other workers' trials ran to the end, in their own directories
        assert json.loads((sweep / str(trial.number) / "metrics.json").read_text())["step"] == 2
    assert not (sweep / str(victim.number) / "metrics.json").exists()
