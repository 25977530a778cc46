"""One search: its checks before any training, and the loop that asks the study for trials,
hands them to a launcher (Hydra's: in this process, on SLURM, ...) and records how each ended.

The loop never waits for a batch of other processes' trials: a process asks for its next trial as
soon as its own last one ended. It ends when the study has ``n_trials`` trials and none of them is
still running anywhere (a killed process's trial goes stale, is failed and retried meanwhile).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from vicreg_lightning.errors import ConfigError
from vicreg_lightning.hparams_search.pruning import check_metric
from vicreg_lightning.hparams_search.space import SearchSpace, parse_space
from vicreg_lightning.hparams_search.study import (
    StudySettings,
    heartbeats,
    make_pruner,
    next_trials,
    open_storage,
    open_study,
    record,
    retried_numbers,
    sampler_seed,
    storage_url,
)

log = logging.getLogger(__name__)
# How often a process with nothing left to start looks again at others' running trials (seconds).
POLL_S = 1.0
# Launches trials as jobs: (overrides of each job, the first job's number) -> (value, failed) per job.
Launch = Callable[[list[list[str]], int], list[tuple[float | None, bool]]]


class Search:
    """A study ready to run: its space checked, its storage open, its sampler seeded for this
    process (``worker``: its index among parallel workers)."""

    def __init__(self, sweeper: DictConfig, config: DictConfig, arguments: Sequence[str], worker: int = 0) -> None:
        self.sweep_dir, self.worker = Path(config.hydra.sweep.dir), worker
        self.n_jobs = int(sweeper.n_jobs)
        self.space: SearchSpace = parse_space(sweeper.params, arguments)
        check_metric(config, "optimized_metric", config.optimized_metric)
        pruning = (config.get("callbacks") or {}).get("search_pruning")
        if pruning and pruning.get("health_metric"):
            check_metric(config, "callbacks.search_pruning.health_metric", pruning.health_metric)
        warmup = int(pruning.warmup_epochs) if pruning else 0
        if sweeper.direction not in ("minimize", "maximize"):
            raise ConfigError(f"hydra.sweeper.direction={sweeper.direction}: choose maximize or minimize")
        if not isinstance(sweeper.n_trials, int) or sweeper.n_trials < 1:
            raise ConfigError(f"hydra.sweeper.n_trials={sweeper.n_trials}: must be an int >= 1")
        self.settings = StudySettings(
            study_name=sweeper.study_name, storage=storage_url(sweeper.storage, self.sweep_dir),
            direction=sweeper.direction, n_trials=sweeper.n_trials, pruner=sweeper.pruner,
            heartbeat_interval=sweeper.heartbeat_interval, grace_period=sweeper.grace_period,
            max_retry=sweeper.max_retry,
        )
        pruner = make_pruner(sweeper.pruner, warmup)
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        self.storage = open_storage(self.settings)
        self.study = open_study(self.settings, self.space, self.storage, pruner=pruner)
        so_far = self.study.get_trials(deepcopy=False)
        sampler = OmegaConf.to_container(sweeper.sampler)
        sampler["seed"] = sampler_seed(sampler.get("seed") or 0, worker, len(so_far))
        self.study.sampler = instantiate(sampler)
        retried = retried_numbers(so_far)
        finished = sum(t.state.is_finished() and t.number not in retried for t in so_far)
        active = sum(t.state in (TrialState.RUNNING, TrialState.WAITING) for t in so_far)
        log.info("study %r in %s: %d trials so far (%d finished, %d running or waiting), n_trials=%d",
                 self.settings.study_name, self.settings.storage, len(so_far), finished, active,
                 self.settings.n_trials)

    def run(self, launch: Launch) -> None:
        """Run trials until the study is done."""
        while True:
            trials = next_trials(self.study, self.storage, self.space, self.settings.n_trials, self.n_jobs,
                                 self.sweep_dir, self.worker)
            if trials is None:
                return
            if not trials:  # other processes' trials still run: one of them may yet fail and be retried
                time.sleep(POLL_S)
                continue
            outcomes = []
            with heartbeats(self.storage, trials, self.settings.heartbeat_interval):
                for group in _consecutive(trials):
                    outcomes += launch([self.space.overrides(t.params) for t in group], group[0].number)
            for trial, (value, failed) in zip(trials, outcomes):
                state = record(self.study, trial, self.sweep_dir / str(trial.number), value, failed)
                log.info("trial %d: %s", trial.number, state.name)
            _stop_if_owed(trials)


def _stop_if_owed(trials: list[optuna.Trial]) -> None:
    """End the search with the preempted exit code once these trials are recorded, if SIGTERM came
    during a trial's last validation (the trial finished; no next one starts)."""
    from vicreg_lightning.callbacks.preemption import end_if_stop_owed

    numbers = ", ".join(str(t.number) for t in trials)
    end_if_stop_owed(f"trial {numbers} finished and was recorded; run the same command again to continue the study")


def _consecutive(trials: list[optuna.Trial]) -> list[list[optuna.Trial]]:
    """The trials in runs of consecutive numbers: a launcher numbers a batch's jobs from its first."""
    groups: list[list[optuna.Trial]] = []
    for trial in trials:
        if groups and groups[-1][-1].number + 1 == trial.number:
            groups[-1].append(trial)
        else:
            groups.append([trial])
    return groups


def job_outcomes(returns: Sequence[Any]) -> list[tuple[float | None, bool]]:
    """``(value, failed)`` of Hydra's job returns."""
    from hydra.core.utils import JobStatus

    return [(ret.return_value, False) if ret.status == JobStatus.COMPLETED else (None, True) for ret in returns]
