"""Each Lightning internal that vicreg-lightning relies on is checked at start-up: when one is gone,
the run stops with one line naming it, instead of silently behaving otherwise."""

from __future__ import annotations

import pytest
from lightning.fabric.loggers.csv_logs import _ExperimentWriter
from lightning.pytorch.loops.progress import _ProcessedTracker
from lightning.pytorch.strategies.launchers import subprocess_script

from vicreg_lightning.patches import IncompatibleLightning, check_internals, use_job_command_for_ddp_children

GONE = [
    (subprocess_script, "_hydra_subprocess_cmd", "subprocess_script._hydra_subprocess_cmd, which vicreg-lightning "
                                                 "uses for the DDP children's command under Hydra"),
    (_ExperimentWriter, "_check_log_dir_exists", "_ExperimentWriter._check_log_dir_exists, which vicreg-lightning "
                                                 "uses for the CSV log kept across resumes"),
]


def test_the_installed_lightning_has_every_internal():
    check_internals()


@pytest.mark.parametrize("owner,name,message", GONE, ids=[name for _, name, _ in GONE])
def test_a_missing_internal_stops_the_run_with_one_line(monkeypatch, owner, name, message):
    monkeypatch.delattr(owner, name)
    with pytest.raises(IncompatibleLightning, match=message.replace(".", r"\.")):
        use_job_command_for_ddp_children()


def test_a_missing_progress_counter_is_named(monkeypatch):
    fields = {k: v for k, v in _ProcessedTracker.__dataclass_fields__.items() if k != "processed"}
    monkeypatch.setattr(_ProcessedTracker, "__dataclass_fields__", fields)
    with pytest.raises(IncompatibleLightning, match="_ProcessedTracker.processed, which vicreg-lightning uses for the "
                                                    "training order's position in checkpoints"):
        check_internals()
