"""Every place where vicreg-lightning depends on a Lightning internal, with the upstream issue and a
check that fails at start-up, with one line, when the internal is gone (:func:`check_internals`),
instead of silently behaving otherwise:

- the DDP children's command under Hydra (Lightning's ``_hydra_subprocess_cmd``, replaced): Lightning
  repeats the whole command line, so under ``-m`` each child would start a sweep of its own
  (https://github.com/facebookresearch/hydra/issues/2070, Lightning PR #18175, open);
- a CSV log that survives a resume (``_ExperimentWriter._check_log_dir_exists``, overridden):
  Lightning deletes an existing ``metrics.csv`` when its writer starts
  (https://github.com/Lightning-AI/pytorch-lightning/pull/19446);
- the batches of the current epoch already trained on (the fit loop's ``batch_progress``, read by
  :class:`~vicreg_lightning.data.datamodule.VICRegDataModule` for its position in checkpoints);
- a stop that SIGTERM asked for during the step before an epoch's validation, taken back until the
  validation has run (the Trainer's ``_signal_connector.received_sigterm``, :func:`take_stop_request`):
  Lightning would stop the validation at its first batch, and on resume skip it for good
  (``restarted_on_last``; the nearest upstream report of validations cut short around a restart:
  https://github.com/Lightning-AI/pytorch-lightning/issues/19549).
"""

from __future__ import annotations

import csv
import io
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from vicreg_lightning.errors import UserError
from vicreg_lightning.run_dir import write_atomically


class IncompatibleLightning(UserError):
    """The installed Lightning lacks an internal that vicreg-lightning relies on."""


def check_internals() -> None:
    """Raise :class:`IncompatibleLightning` naming the first internal that is gone."""
    import lightning
    from lightning.pytorch.loops.progress import _ProcessedTracker
    from lightning.pytorch.strategies.launchers import subprocess_script
    from lightning.pytorch.trainer.connectors.signal_connector import _SignalConnector

    required = [
        (subprocess_script, "_hydra_subprocess_cmd", "the DDP children's command under Hydra"),
        (_ExperimentWriter, "_check_log_dir_exists", "the CSV log kept across resumes"),
        (_ExperimentWriter, "_record_new_keys", "the CSV log kept across resumes"),
    ]
    for owner, name, purpose in required:
        if not hasattr(owner, name):
            where = owner.__name__ if isinstance(owner, ModuleType) else f"{owner.__module__}.{owner.__qualname__}"
            _missing(lightning.__version__, f"{where}.{name}", purpose)
    if not hasattr(_SignalConnector(None), "received_sigterm"):  # type: ignore[arg-type]
        _missing(lightning.__version__, "lightning.pytorch.trainer.connectors.signal_connector._SignalConnector"
                 ".received_sigterm", "an epoch's validation before a stop")
    if "processed" not in getattr(_ProcessedTracker, "__dataclass_fields__", {}):
        _missing(lightning.__version__, "lightning.pytorch.loops.progress._ProcessedTracker.processed",
                 "the training order's position in checkpoints")


def _missing(version: str, name: str, purpose: str) -> None:
    raise IncompatibleLightning(
        f"lightning {version} has no {name}, which vicreg-lightning uses for {purpose} "
        "(vicreg_lightning/patches.py); install a Lightning that has it (the tests run on lightning 2.6)"
    )


def _ddp_child_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning's DDP launcher runs for rank ``local_rank`` when started by Hydra.

    Lightning's own repeats ``sys.argv``: under ``-m`` every child would start a sweep of its own,
    in run directories of its own. Here a child runs exactly this job: its resolved overrides,
    its output directory, and no second copy of ``.hydra/`` (rank 0 writes that).
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hydra_cfg = HydraConfig.get()
    if __main__.__spec__ is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += _config_flags(sys.argv[1:])
    command += list(hydra_cfg.overrides.task)
    output_dir = Path(hydra_cfg.runtime.output_dir).resolve()
    command += [
        f'hydra.run.dir="{output_dir}"',
        f"hydra.job.name={hydra_cfg.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


_CONFIG_FLAGS = ("--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd")


def _config_flags(argv: list[str]) -> list[str]:
    """The arguments of ``argv`` that choose the config (``-cn NAME``, ``--config-dir=DIR``, ...)."""
    kept: list[str] = []
    args = iter(argv)
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in _CONFIG_FLAGS:
            kept.append(arg)
            if "=" not in arg:
                kept.append(next(args, ""))
    return kept


def use_job_command_for_ddp_children() -> None:
    """Make Lightning's DDP launcher start children with :func:`_ddp_child_command` (Lightning picks
    the command through a module-level function with no public hook)."""
    from lightning.pytorch.strategies.launchers import subprocess_script

    check_internals()
    subprocess_script._hydra_subprocess_cmd = _ddp_child_command


def take_stop_request(trainer: Any) -> bool:
    """Whether SIGTERM (or what stands for it: Ctrl-C, a requeue signal) asked this rank to stop;
    the request is taken back, for the caller to make again (``os.kill(os.getpid(), SIGTERM)``)."""
    connector = trainer._signal_connector
    requested = bool(connector.received_sigterm)
    connector.received_sigterm = False
    return requested


class _HistoryKeepingWriter(ExperimentWriter):
    """Lightning's CSV writer deletes an existing ``metrics.csv`` when it starts; this one keeps its
    rows. When the first new rows are saved, the earlier rows from their first step on are dropped:
    those were logged after the checkpoint that the run resumed from, by the attempt that was cut
    short, and the resumed run logs those steps again."""

    def _check_log_dir_exists(self) -> None:
        self._history: list[dict[str, str]] = []
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                reader = csv.DictReader(f)
                self._history = list(reader)
                self.metrics_keys = sorted(reader.fieldnames or [])

    def save(self) -> None:
        if self._history and self.metrics:
            first_new_step = min(int(row["step"]) for row in self.metrics)
            kept = [row for row in self._history if not row.get("step") or int(float(row["step"])) < first_new_step]
            self._history = []
            self._record_new_keys()
            text = io.StringIO(newline="")
            writer = csv.DictWriter(text, fieldnames=self.metrics_keys)
            writer.writeheader()
            writer.writerows(kept)
            write_atomically(Path(self.metrics_file_path), text.getvalue())
        super().save()


class HistoryKeepingCSVLogger(CSVLogger):
    """Lightning's ``CSVLogger`` (``<save_dir>/<name>/metrics.csv``), keeping the rows of earlier
    attempts of a resumed run (:class:`_HistoryKeepingWriter`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryKeepingWriter(log_dir=self.log_dir)
        return self._experiment
