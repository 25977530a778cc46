"""Resume and preemption as users meet them: ``train.py`` stopped and started again, with the
default data configuration (a persistent loader worker) and random augmentation on."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests import warm
from tests.runs import ROOT, TINY, TWO_EPOCHS, compose_train, train, train_here, weights
from vicreg_lightning.config import preset

SIGNAL_AT_STEP_6 = ["+callbacks.kill._target_=tests.helpers.SignalAtStep", "+callbacks.kill.step=6",
                    "+callbacks.kill.group=true"]

pytestmark = pytest.mark.xdist_group("resume")


def train_in_own_session(*overrides: str) -> subprocess.CompletedProcess:
    """``train.py`` as the leader of its own process group, which a test may signal whole."""
    return warm.run([sys.executable, str(ROOT / "train.py"), *overrides], timeout=600, cwd=ROOT,
                    start_new_session=True)


def assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = weights(a_dir), weights(b_dir)
    different = [name for name in a if not torch.equal(a[name], b[name])]
    assert not different, f"resumed run differs from the uninterrupted one in {different[:5]}"


def csv_rows(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def straight(two_epoch_run) -> Path:
    return two_epoch_run


def test_a_run_killed_after_its_first_checkpoint_and_resumed_ends_with_the_same_weights(straight, tmp_path):
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = warm.popen([sys.executable, str(ROOT / "train.py"), *TWO_EPOCHS, f"hydra.run.dir={run_dir}"], cwd=ROOT,
                      start_new_session=True)
    deadline = time.monotonic() + 300
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "metrics.json").exists(), "the run finished before it could be killed"

    resumed = train_here(*TWO_EPOCHS, "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["step"] == 8
    assert_same_weights(straight, run_dir)


def test_sigterm_to_the_process_group_mid_epoch_saves_and_the_resumed_run_ends_the_same(straight, tmp_path):
    run_dir = tmp_path / "run"
    stopped = train_in_own_session(*TWO_EPOCHS, *SIGNAL_AT_STEP_6, f"hydra.run.dir={run_dir}")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "ckpt_path=last" in stopped.stderr and "Traceback" not in stopped.stderr
    assert not (run_dir / "metrics.json").exists()
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 6  # within the second epoch (4 steps each)
    first_attempt = csv_rows(run_dir)
    assert {int(row["step"]) for row in first_attempt if row["train/loss"]} == set(range(6))

    resumed = train_here(*TWO_EPOCHS, "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 8 and metrics["epoch"] == 2
    # The next batches of the same order, the same views: the weights of the uninterrupted run.
    assert_same_weights(straight, run_dir)
    # The first attempt's log survives the resume, unchanged, and the second attempt's follows.
    rows = csv_rows(run_dir)
    assert [{k: v for k, v in row.items() if v} for row in rows[:len(first_attempt)]] == \
        [{k: v for k, v in row.items() if v} for row in first_attempt]
    assert {int(row["step"]) for row in rows if row["train/loss"]} == set(range(8))


def test_sigterm_during_validation_lets_it_finish_and_the_resumed_run_ends_the_same(straight, tmp_path):
    run_dir = tmp_path / "run"
    stopped = train(*TWO_EPOCHS, "+callbacks.kill._target_=tests.helpers.SignalDuringValidation",
                    "+callbacks.kill.epoch=0", f"hydra.run.dir={run_dir}")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    # Epoch 0 was validated whole: its metrics are logged and its best checkpoint is written.
    assert [row["epoch"] for row in csv_rows(run_dir) if row["val/probe_acc1"]] == ["0"]
    assert (run_dir / "checkpoints" / "best-epoch000.ckpt").exists()
    resumed = train_here(*TWO_EPOCHS, "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert [row["epoch"] for row in csv_rows(run_dir) if row["val/probe_acc1"]] == ["0", "1"]
    assert_same_weights(straight, run_dir)


def test_sigterm_in_an_epochs_last_step_validates_that_epoch_before_stopping(straight, tmp_path):
    # Lightning would stop before the epoch's validation, and the resumed run would skip it for good.
    from vicreg_lightning.train import run

    run_dir = tmp_path / "run"
    at_epoch_end = ["+callbacks.kill._target_=tests.helpers.SignalAtStep", "+callbacks.kill.step=4"]
    with pytest.raises(SystemExit) as stopped:
        run(compose_train(*TWO_EPOCHS, *at_epoch_end, f"paths.output_dir={run_dir}"))
    assert stopped.value.code == 143
    validated = [row["epoch"] for row in csv_rows(run_dir) if row["val/probe_acc1"]]
    assert validated == ["0"], validated
    assert [row["epoch"] for row in csv_rows(run_dir) if row["health/embed_rankme"]][-1:] == ["0"]
    assert torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["epoch"] == 1

    run(compose_train(*TWO_EPOCHS, "ckpt_path=last", f"paths.output_dir={run_dir}"))
    rows = csv_rows(run_dir)
    assert [row["epoch"] for row in rows if row["val/probe_acc1"]] == ["0", "1"]
    assert_same_weights(straight, run_dir)


def test_ctrl_c_mid_epoch_saves_a_checkpoint_and_exits_as_preempted(tmp_path):
    run_dir = tmp_path / "run"
    stopped = train_in_own_session(*TWO_EPOCHS, *SIGNAL_AT_STEP_6, "+callbacks.kill.signal_name=SIGINT",
                                   f"hydra.run.dir={run_dir}")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    assert "ckpt_path=last" in stopped.stderr and "Traceback" not in stopped.stderr
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 6


def test_ckpt_path_last_in_a_new_run_directory_starts_from_scratch(tmp_path, capsys):
    from vicreg_lightning.train import run

    run_dir = tmp_path / "run"
    metrics = run(compose_train(*TINY, "ckpt_path=last", f"paths.output_dir={run_dir}"))
    assert "ckpt_path=last: no checkpoint" in capsys.readouterr().err
    assert metrics["step"] == 4 and json.loads((run_dir / "metrics.json").read_text())["step"] == 4


def test_requeue_signal_saves_a_checkpoint_before_the_waiting_handler_requeues(tmp_path):
    run_dir, marker = tmp_path / "run", tmp_path / "requeued"
    stopped = train(*TWO_EPOCHS, "+callbacks.requeue._target_=tests.helpers.StandInRequeueHandler",
                    f"+callbacks.requeue.marker={marker}", *SIGNAL_AT_STEP_6[:2], "+callbacks.kill.signal_name=SIGUSR2",
                    f"hydra.run.dir={run_dir}")
    assert stopped.returncode != 0
    assert marker.read_text().startswith("requeued")
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == 6


def test_a_checkpoint_of_another_optimiser_is_refused_before_training(tmp_path):
    from vicreg_lightning.errors import ConfigError
    from vicreg_lightning.module import VICRegModule
    from vicreg_lightning.resume import check_checkpoint

    def module(optim: str) -> VICRegModule:
        return VICRegModule(model=preset("model", "digits", "small_stem=true", "expander=32-16"),
                            loss={}, optim={"name": optim, "base_lr": 0.1}, num_classes=10, batch_size=8,
                            image_size=32)

    lars = module("lars")
    torch.save({"state_dict": lars.state_dict(), "hyper_parameters": dict(lars.hparams)}, tmp_path / "lars.ckpt")
    check_checkpoint(tmp_path / "lars.ckpt", module("lars"), "lars.ckpt")
    with pytest.raises(ConfigError, match="written with optim.name='lars', this run uses 'adamw'; resume with optim=lars"):
        check_checkpoint(tmp_path / "lars.ckpt", module("adamw"), "lars.ckpt")


def test_a_missing_or_other_model_checkpoint_is_refused_naming_it(tmp_path):
    from vicreg_lightning.errors import ConfigError
    from vicreg_lightning.module import VICRegModule
    from vicreg_lightning.resume import check_checkpoint

    module = VICRegModule(model=preset("model", "digits", "expander=32-16"), loss=preset("loss", "vicreg"),
                          optim=preset("optim", "lars"), num_classes=10, batch_size=8, image_size=32)
    with pytest.raises(ConfigError, match=r"^ckpt_path='/no/such.ckpt': no such file"):
        check_checkpoint(Path("/no/such.ckpt"), module, "/no/such.ckpt")
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(64, 3, 3, 3)}}, tmp_path / "other.ckpt")
    with pytest.raises(ConfigError, match=r"different model \(backbone.conv1.weight: \(64, 3, 3, 3\) saved, "
                                          r"\(64, 3, 7, 7\) expected"):
        check_checkpoint(tmp_path / "other.ckpt", module, "other.ckpt")


def test_views_made_on_the_device_resume_exactly_from_a_mid_epoch_checkpoint(tmp_path):
    # augment.on_device=true draws from the device's global generator, whose state every checkpoint holds.
    on_device = [*TWO_EPOCHS, "augment.on_device=true"]
    straight_run, run_dir = tmp_path / "straight", tmp_path / "run"
    assert train_here(*on_device, f"hydra.run.dir={straight_run}").returncode == 0
    stopped = train_in_own_session(*on_device, *SIGNAL_AT_STEP_6, f"hydra.run.dir={run_dir}")
    assert stopped.returncode == 143, stopped.stderr[-3000:]
    resumed = train_here(*on_device, "ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_weights(straight_run, run_dir)


def test_sigterm_during_the_last_validation_lets_the_run_finish(tmp_path):
    run_dir = tmp_path / "run"
    proc = train(*TWO_EPOCHS, "+callbacks.kill._target_=tests.helpers.SignalDuringValidation",
                 "+callbacks.kill.epoch=1", f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 8 and "val/probe_acc1" in metrics


def test_a_failed_run_gives_the_signal_handlers_back(tmp_path):
    import signal

    from tests.runs import compose_train
    from vicreg_lightning.errors import NonFiniteEmbeddingError
    from vicreg_lightning.train import run

    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(NonFiniteEmbeddingError):
        run(compose_train(*TINY, "optim.base_lr=1e30", "trainer.log_every_n_steps=1", f"paths.output_dir={tmp_path}"))
    assert signal.getsignal(signal.SIGINT) is before


def test_a_checkpoint_of_another_global_batch_is_refused_before_training(tmp_path):
    from vicreg_lightning.errors import ConfigError
    from vicreg_lightning.module import VICRegModule
    from vicreg_lightning.resume import check_checkpoint

    def module(batch_size: int) -> VICRegModule:
        return VICRegModule(model=preset("model", "digits", "expander=32-16"), loss={},
                            optim={"name": "lars", "base_lr": 0.1}, num_classes=10, batch_size=batch_size,
                            image_size=32)

    saved = module(32)
    torch.save({"state_dict": saved.state_dict(), "hyper_parameters": dict(saved.hparams), "epoch": 1,
                "global_step": 4}, tmp_path / "run.ckpt")
    check_checkpoint(tmp_path / "run.ckpt", module(32), "run.ckpt", max_epochs=2)
    with pytest.raises(ConfigError, match=r"written with data.batch_size=32, this run has 64: the training order and "
                                          r"the step count would not continue its run; resume with data.batch_size=32"):
        check_checkpoint(tmp_path / "run.ckpt", module(64), "run.ckpt", max_epochs=2)
    # A finished run's checkpoint has nothing left to train within its limit.
    with pytest.raises(ConfigError, match=r"its run has trained 1 epoch\(s\), 4 step\(s\): nothing left to train "
                                          r"within trainer.max_epochs=1; to train longer, raise it"):
        check_checkpoint(tmp_path / "run.ckpt", module(32), "run.ckpt", max_epochs=1)


def test_a_finished_runs_checkpoint_into_a_new_directory_writes_nothing(tiny_digits_run, tmp_path):
    from vicreg_lightning.errors import ConfigError
    from vicreg_lightning.train import run

    run_dir = tmp_path / "run"
    with pytest.raises(ConfigError, match="nothing left to train within trainer.max_epochs=1"):
        run(compose_train(*TINY, f"ckpt_path={tiny_digits_run / 'checkpoints' / 'last.ckpt'}",
                          f"paths.output_dir={run_dir}"))
    assert not run_dir.exists() or not any(run_dir.iterdir())


def test_a_run_stopped_by_max_time_is_not_recorded_as_finished_and_resumes(straight, tmp_path, capsys):
    from vicreg_lightning.train import run

    run_dir = tmp_path / "run"
    metrics = run(compose_train(*TWO_EPOCHS, "+trainer.max_time=00:00:00:01", f"paths.output_dir={run_dir}"))
    assert metrics["step"] < 8 and not (run_dir / "metrics.json").exists()
    assert f"not finished; continue with: hydra.run.dir={run_dir} ckpt_path=last" in capsys.readouterr().err
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == metrics["step"]
    finished = run(compose_train(*TWO_EPOCHS, "ckpt_path=last", f"paths.output_dir={run_dir}"))
    assert finished["step"] == 8 and json.loads((run_dir / "metrics.json").read_text())["step"] == 8
    assert_same_weights(straight, run_dir)
