"""How bad input ends a process: one line on stderr and exit code 2, not a traceback.

Hydra would print its own multi-line report of a composition error, and a traceback for an error
raised in the job. :func:`exit_on_user_error` (around the ``@hydra.main`` function) and
:func:`user_errors_exit` (inside it) print one line instead for the errors that are the user's to
fix (:class:`~vicreg_lightning.errors.UserError`, a bad override, a missing config option, a
diverged run). Anything else is a bug and keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows
tracebacks for everything. In a ``-m`` sweep a failed job is recorded in its run directory
(``failure.json``) and the sweep goes on.

Library code below the command line (:mod:`vicreg_lightning.cli`): it imports no torch, torchvision
or Lightning, so a bad command line fails in seconds.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException, SearchPathException
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException
from yaml import MarkedYAMLError

from vicreg_lightning.errors import JobFailed, RunDirRefused, UserError
from vicreg_lightning.run_dir import FAILURE_FILE, is_finished, is_first_process, save_job_config


def describe_error(error: BaseException) -> str | None:
    """One line for an error that is the user's to fix; None for anything else (a bug)."""
    if isinstance(error, UserError):
        return _own_message(str(error))
    if isinstance(error, SearchPathException):  # --config-dir of a folder that is not there
        return f"{str(error).splitlines()[0]}; give --config-dir the folder that holds your presets"
    invalid_yaml = next((e for e in (error, error.__cause__, error.__context__) if isinstance(e, MarkedYAMLError)), None)
    if invalid_yaml is not None and invalid_yaml.problem_mark is not None:  # a preset of one's own
        mark = invalid_yaml.problem_mark
        return (f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}: not valid YAML ({invalid_yaml.problem}); "
                "fix the file")
    if isinstance(error, MissingConfigException):
        missing = error.missing_cfg_file or ""
        if "/" in missing and error.options:
            group, _, option = missing.rpartition("/")
            return f"{group}={option}: no such option; choose one of: {', '.join(sorted(error.options))}"
        return str(error).splitlines()[0]
    if isinstance(error, (ConfigCompositionException, OverrideParseException)):
        cause = error.__cause__
        if isinstance(cause, OmegaConfBaseException) and getattr(cause, "full_key", None):
            reason = str(cause).splitlines()[0]
            if isinstance(cause, (ConfigKeyError, ConfigAttributeError)):
                return f"unknown config key '{cause.full_key}' (check its spelling; add keys with +key=value)"
            return f"{cause.full_key}: {reason}"
        return " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return None


def _own_message(message: str) -> str:
    """An error's message; for one raised in a DataLoader worker, the worker's own message, not the
    report that PyTorch raises it again with in the main process ("Caught DataError in DataLoader
    worker process 0. Original Traceback ...", ending in the original "<module>.DataError: ...")."""
    if message.startswith("Caught ") and "\nOriginal Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        return last.partition(": ")[2] or last
    return message


def _exit_with(message: str) -> NoReturn:
    # Under DDP every rank meets the same bad input: rank 0 alone says so.
    if is_first_process():
        print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _tracebacks_wanted() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" and not os.environ.get("_VICREG_SET_FULL_ERROR")


def exit_on_user_error(entry: Callable[[], Any]) -> Any:
    """Call a ``@hydra.main`` function; a composition error (unknown key, missing option, bad
    override) ends it with one line. ``HYDRA_FULL_ERROR`` makes Hydra re-raise such errors
    instead of printing its own report, so that they can be told here."""
    if "HYDRA_FULL_ERROR" not in os.environ:
        os.environ.update(HYDRA_FULL_ERROR="1", _VICREG_SET_FULL_ERROR="1")
    try:
        return entry()
    except Exception as error:  # noqa: BLE001 - told apart by describe_error
        message = None if _tracebacks_wanted() else describe_error(error)
        if message is None:
            raise
        _exit_with(message)


def sweep_job() -> Any:
    """This job's Hydra config when it is one job of a ``-m`` sweep, else None."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    return hydra_cfg if hydra_cfg.mode == RunMode.MULTIRUN else None


def _record_failed_job(job: Any, error: Exception, cfg: Any) -> JobFailed:
    """Write ``failure.json`` (and the job's ``.hydra/``, which a job that failed early has not
    written yet; the sweep summary finds jobs by it) into the job's run directory; the error the
    sweeper is given."""
    reason = describe_error(error) or f"{type(error).__name__}: {error}"
    if describe_error(error) is None:  # a bug: its traceback goes to the job's log file
        logging.getLogger(__name__).exception("job %s failed", job.job.num)
    record = {"status": "failed", "error": reason, "type": type(error).__name__,
              "overrides": list(job.overrides.task)}
    output_dir = Path(job.runtime.output_dir)
    # A job refused for its directory (a finished run's, another live job's) leaves it as it was.
    if not isinstance(error, RunDirRefused) and not is_finished(output_dir):
        output_dir.mkdir(parents=True, exist_ok=True)
        if cfg is not None:
            save_job_config(cfg)
        (output_dir / FAILURE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    message = f"job {job.job.num} ({' '.join(job.overrides.task)}) failed: {reason}"
    print(f"error: {message}", file=sys.stderr)
    return JobFailed(message)


@contextmanager
def user_errors_exit(cfg: Any = None) -> Iterator[None]:
    """Inside the job: a user error ends the process with one line (Hydra would otherwise add
    "Error executing job with overrides: ..." and a traceback).

    In a ``-m`` sweep a failing job (bad values, a diverged run, a bug) must not end the sweep:
    it is recorded in ``<job dir>/failure.json`` and raised as :class:`JobFailed`, which Hydra's
    launcher keeps as the job's result (the Optuna sweeper: a failed trial) while the next jobs
    run. ``cfg``: the job's config as composed, recorded with a failed sweep job."""
    try:
        yield
    except Exception as error:  # noqa: BLE001 - told apart by describe_error
        job = sweep_job()
        if job is not None:
            raise _record_failed_job(job, error, cfg) from error
        message = None if _tracebacks_wanted() else describe_error(error)
        if message is None:
            raise
        _exit_with(message)
