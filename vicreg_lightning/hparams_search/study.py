"""The study: its storage, its checks on resume, its sampler and pruner, and the loop's bookkeeping
(which trial runs next, heartbeats, recording a finished job).

Several processes may share one study (parallel workers, or a search started again): a trial is
marked failed only when its own heartbeat has stopped (its process was killed), and then retried
once with the same parameters; other processes' running trials are left alone.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from vicreg_lightning.errors import ConfigError, UserError
from vicreg_lightning.hparams_search.space import SearchSpace
from vicreg_lightning.run_dir import FAILURE_FILE, PRUNED_FILE

PRUNERS = ("none", "median", "patient", "successive_halving")
SPACE_ATTR = "search_space"
LOCK_FILE = ".search.lock"
# Heartbeats and their retries are "experimental" since Optuna 2.9, and unchanged since; and Optuna
# warns that they are meant for Study.optimize, which sends them itself (here: heartbeats()). Each
# would be repeated at every trial.
warnings.filterwarnings("ignore", message=r".*(heartbeat|RetryHeartbeatStaleTrialCallback|fail_stale_trials)",
                        category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")


@dataclass(frozen=True)
class StudySettings:
    """``hydra.sweeper``'s study keys (conf/hydra/sweeper/vicreg_optuna.yaml)."""

    study_name: str
    storage: str
    direction: str
    n_trials: int
    pruner: str
    heartbeat_interval: int
    grace_period: int
    max_retry: int


def storage_url(storage: str | None, sweep_dir: Path) -> str:
    """``hydra.sweeper.storage``, or by default a sqlite file in the sweep directory."""
    return storage or f"sqlite:///{sweep_dir.resolve() / 'optuna.db'}"


def _check_sqlite_file(url: str) -> None:
    path = Path(url.removeprefix("sqlite:///"))
    shown = f"hydra.sweeper.storage={url!r}"
    if path.exists():
        if not os.access(path, os.R_OK | os.W_OK):
            raise UserError(f"{shown}: {path} cannot be read and written; fix its permissions or choose another file")
        with path.open("rb") as f:
            header = f.read(16)
        if header and header != b"SQLite format 3\x00":
            raise UserError(f"{shown}: {path} is not a sqlite database (corrupt?); move it away or choose another file")
    elif not path.parent.is_dir() or not os.access(path.parent, os.W_OK):
        raise UserError(f"{shown}: cannot create {path} (its folder is missing or not writable); choose another file")


def open_storage(settings: StudySettings) -> RDBStorage:
    """The study's database, with heartbeats: trials of this process send them, and a trial whose
    heartbeats stopped for ``grace_period`` (its process was killed) is failed and queued again."""
    url = settings.storage
    if url.startswith("sqlite:///"):
        _check_sqlite_file(url)
    beat = dict(heartbeat_interval=settings.heartbeat_interval, grace_period=settings.grace_period,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=settings.max_retry))
    # Several workers write to one sqlite file: wait for its lock rather than fail at once.
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        return RDBStorage(url, engine_kwargs=engine, **beat)
    except Exception as e:  # noqa: BLE001 - SQLAlchemy's errors differ by database; all mean the same here
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"hydra.sweeper.storage={url!r} cannot be opened ({reason}); give a writable database "
                        "URL, e.g. sqlite:///optuna.db") from None


def make_pruner(name: str, warmup_epochs: int) -> optuna.pruners.BasePruner:
    """The objective's pruner by name (``hydra.sweeper.pruner``)."""
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup_epochs)
    if name == "patient":
        return optuna.pruners.PatientPruner(None, patience=max(1, warmup_epochs))
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, warmup_epochs))
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"hydra.sweeper.pruner={name}: no such pruner; choose one of: {', '.join(PRUNERS)}")


def sampler_seed(base_seed: int, worker: int, trials_so_far: int) -> int:
    """A seed for this worker's sampler that differs per worker and per start of the search (the
    study's trial count grows), so that no two samplers draw the same random start-up points."""
    return int(np.random.SeedSequence([base_seed, worker, trials_so_far]).generate_state(1)[0])


def open_study(settings: StudySettings, space: SearchSpace, storage: RDBStorage, sampler: Any = None,
               pruner: optuna.pruners.BasePruner | None = None) -> optuna.Study:
    """Load the stored study, after checking that it is the same search (space, direction); or
    create it. Nothing is written to an existing study that does not match."""
    shown = f"study {settings.study_name!r} in {settings.storage}"
    try:
        study = optuna.load_study(study_name=settings.study_name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(study_name=settings.study_name, storage=storage, sampler=sampler, pruner=pruner,
                                    direction=settings.direction)
        study.set_user_attr(SPACE_ATTR, space.signature())
        return study
    if study.direction.name.lower() != settings.direction:
        raise UserError(f"{shown} was created to {study.direction.name.lower()}, not to {settings.direction}; "
                        "keep hydra.sweeper.direction, or choose a new hydra.sweeper.study_name")
    stored = study.user_attrs.get(SPACE_ATTR)
    if stored != space.signature():
        changed = sorted(set(stored or {}) ^ set(space.signature()) or
                         {k for k in space.signature() if stored[k] != space.signature()[k]})
        raise UserError(f"{shown} searches another space (differs in: {', '.join(changed)}); keep "
                        "hydra.sweeper.params as they were, or choose a new hydra.sweeper.study_name")
    return study


def retried_numbers(trials: list[FrozenTrial]) -> set[int]:
    """The trials that a retry replaces (failed when their process was killed)."""
    return {n for n in map(RetryHeartbeatStaleTrialCallback.retried_trial_number, trials) if n is not None}


def counted(trials: list[FrozenTrial]) -> int:
    """Trials that count towards ``n_trials``: complete, pruned, failed or running; a killed trial
    and its retry count once."""
    retried = retried_numbers(trials)
    return sum(t.state != TrialState.WAITING and t.number not in retried for t in trials)


@contextmanager
def study_lock(sweep_dir: Path) -> Iterator[None]:
    """One process at a time decides which trial runs next (workers of one machine)."""
    sweep_dir.mkdir(parents=True, exist_ok=True)
    with open(sweep_dir / LOCK_FILE, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def next_trials(study: optuna.Study, storage: RDBStorage, space: SearchSpace, n_trials: int, n_jobs: int,
                sweep_dir: Path, worker: int = 0) -> list[optuna.Trial] | None:
    """Up to ``n_jobs`` trials to run now (retries of killed trials first), each marked with the
    worker and process that run it; ``[]`` while the study waits only for other processes'
    running trials; None when it is done."""
    with study_lock(sweep_dir):
        optuna.storages.fail_stale_trials(study)  # killed processes' trials: failed, then queued again
        trials = study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        room = min(n_jobs, max(0, n_trials - counted(trials)) + waiting)
        asked = [study.ask(space.params) for _ in range(room)]
        for trial in asked:
            trial.set_user_attr("worker", worker)
            trial.set_user_attr("pid", os.getpid())
            storage.record_heartbeat(trial._trial_id)  # noqa: SLF001 - as optimize() does on ask
        if asked:
            return asked
        return [] if any(t.state == TrialState.RUNNING for t in trials) else None


@contextmanager
def heartbeats(storage: RDBStorage, trials: list[optuna.Trial], interval: float) -> Iterator[None]:
    """Send the trials' heartbeats while they run (their jobs may run in other processes)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval):
            for trial in trials:
                storage.record_heartbeat(trial._trial_id)  # noqa: SLF001

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def record(study: optuna.Study, trial: optuna.Trial, run_dir: Path, value: float | None, failed: bool) -> TrialState:
    """Tell the study how the trial's job ended: pruned (``pruned.json`` in its run directory,
    whose epoch, reason and last values become the trial's user attributes), failed, or done."""
    pruned = run_dir / PRUNED_FILE
    if pruned.is_file():
        info = json.loads(pruned.read_text())
        trial.set_user_attr("pruned_epoch", info["epoch"])
        trial.set_user_attr("prune_reason", info["reason"])
        trial.set_user_attr("last_values", info["values"])
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED
    if failed or value is None or not math.isfinite(value):
        if (run_dir / FAILURE_FILE).is_file():
            trial.set_user_attr("error", json.loads((run_dir / FAILURE_FILE).read_text())["error"])
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL
    study.tell(trial, value)
    return TrialState.COMPLETE


def results(study: optuna.Study) -> dict[str, Any]:
    """The best trial so far, as ``optimization_results.yaml`` holds it."""
    done = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    states = {state.name: sum(t.state == state for t in study.get_trials(deepcopy=False)) for state in TrialState}
    if not done:
        return {"name": "optuna", "best_params": None, "best_value": None, "trials": states}
    best = study.best_trial
    return {"name": "optuna", "best_trial": best.number, "best_params": dict(best.params),
            "best_value": best.value, "direction": study.direction.name.lower(), "trials": states}
