"""The sweeper of ``hparams_search=vicreg_optuna`` (conf/hydra/sweeper/vicreg_optuna.yaml): a
search on current Optuna, driven by vicreg_lightning.hparams_search. Each trial is one job of
Hydra's launcher (in this process, or ``hydra/launcher=local|slurm``: ``n_jobs`` trials a batch);
``workers: K`` runs K searches at once in processes of this machine instead, each trial a job of
Hydra's in-process launcher. (Here because Hydra finds sweepers only in the ``hydra_plugins``
namespace; imports are deferred, as Hydra imports every plugin module at each start.)"""

from __future__ import annotations

import sys
from typing import Any

from hydra.plugins.sweeper import Sweeper


class OptunaSearchSweeper(Sweeper):
    """Hydra's side of :class:`vicreg_lightning.hparams_search.search.Search`."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings  # also in self.config.hydra.sweeper, which is what is read
        self.hydra_context: Any = None
        self.task_function: Any = None
        self.config: Any = None
        self.launcher: Any = None

    def setup(self, *, hydra_context: Any, task_function: Any, config: Any) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def sweep(self, arguments: list[str]) -> Any:
        import yaml
        from hydra.core.plugins import Plugins

        from vicreg_lightning.hparams_search.search import Search
        from vicreg_lightning.hparams_search.study import results
        from vicreg_lightning.hparams_search.workers import check_workers, run_workers

        sweeper = self.config.hydra.sweeper
        if sweeper.workers != 1:
            check_workers(sweeper.workers, self.config.hydra.runtime.choices.get("hydra/launcher"))
        search = Search(sweeper, self.config, arguments)  # every check, before any trial or worker starts
        if sweeper.workers == 1:
            self.launcher = Plugins.instance().instantiate_launcher(
                hydra_context=self.hydra_context, task_function=self.task_function, config=self.config)
            search.run(self._launch)
        else:
            codes = run_workers(sweeper.workers, lambda index: self._work(arguments, index))
            stopped = [f"worker {i} (exit code {code})" for i, code in enumerate(codes) if code != 0]
            if stopped:
                print(f"error: {', '.join(stopped)} stopped early; start the same command again to continue "
                      f"the study in {search.settings.storage}", file=sys.stderr)
                sys.exit(1)
        summary = results(search.study)
        (search.sweep_dir / "optimization_results.yaml").write_text(yaml.safe_dump(summary, sort_keys=False))
        print(f"best trial of study {search.settings.study_name!r}: {summary.get('best_trial')} "
              f"{summary.get('best_params')} -> {summary.get('best_value')}")

    def _work(self, arguments: list[str], index: int) -> None:
        """One worker (a forked process): the search with its own storage connection and
        sampler seed, its trials run in this process."""
        from hydra._internal.core_plugins.basic_launcher import BasicLauncher

        from vicreg_lightning.hparams_search.search import Search

        self.launcher = BasicLauncher()
        self.launcher.setup(hydra_context=self.hydra_context, task_function=self.task_function, config=self.config)
        search = Search(self.config.hydra.sweeper, self.config, arguments, worker=index)
        search.n_jobs = 1  # the in-process launcher runs a batch one job after the other
        search.run(self._launch)

    def _launch(self, overrides: list[list[str]], first: int) -> list[tuple[float | None, bool]]:
        from vicreg_lightning.hparams_search.search import job_outcomes

        return job_outcomes(self.launcher.launch(overrides, initial_job_idx=first))
