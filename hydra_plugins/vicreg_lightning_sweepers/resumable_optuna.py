"""An Optuna search that survives being stopped: ``hparams_search=vicreg_optuna`` with
``hydra.sweeper.storage=sqlite:///<file>``, started again with the same command line, continues
the same study. (Here because Hydra finds sweepers only in the ``hydra_plugins`` namespace.)

hydra-optuna-sweeper's own sweeper loads an existing study but then runs ``n_trials`` more trials,
numbers its jobs from 0 again (into the run directories of the first attempt's jobs, when the sweep
directory is the same) and leaves the trial that was running when the search was killed as
"running" for ever. This one counts ``n_trials`` over the whole study: the trial that was cut short
is marked failed, the jobs go on numbering from the study's trial count, and only the trials still
missing are run.
"""

from __future__ import annotations

import logging
from typing import Any

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

log = logging.getLogger(__name__)


class ResumableOptunaSweeper(OptunaSweeper):
    """hydra-optuna-sweeper's ``OptunaSweeper``, continuing a stored study where it stopped."""

    def sweep(self, arguments: list[str]) -> Any:
        impl = self.sweeper
        if impl.storage is not None:
            self._continue_study(impl)
        return super().sweep(arguments)

    @staticmethod
    def _continue_study(impl: Any) -> None:
        # Imported here: Hydra imports every plugin module at each start, sweeping or not.
        import optuna

        try:
            study = optuna.load_study(study_name=impl.study_name, storage=impl.storage)
        except KeyError:  # no such study yet: a new search
            return
        trials = study.get_trials(deepcopy=False)
        for trial in trials:
            if trial.state in (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING):
                # Cut short when the search was stopped; its job did not finish.
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        finished = sum(trial.state.is_finished() for trial in trials)
        log.info("continuing study %r: %d trials so far (%d finished), %d to go",
                 impl.study_name, len(trials), finished, max(0, impl.n_trials - finished))
        impl.n_trials = max(0, impl.n_trials - finished)
        # Job numbers (and so run directories) go on after the earlier attempts'.
        impl.job_idx = len(trials)
