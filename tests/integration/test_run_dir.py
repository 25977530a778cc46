"""Nothing saved in a run directory is lost: finished runs stay as they are, a directory in use,
another run's checkpoint, an evaluation into a training run's directory and one that cannot be
written are refused; the config of an attempt that saved nothing is replaced."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.runs import TINY, compose_eval, compose_train, train_here
from vicreg_lightning.errors import RunDirRefused
from vicreg_lightning.run_dir import claim, held, save_job_config


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def unfinished_copy(run: Path, folder: Path) -> Path:
    """A run directory as an interrupted run leaves it: the run's files without metrics.json."""
    shutil.copytree(run, folder)
    (folder / "metrics.json").unlink()
    return folder


def test_a_finished_run_stays_untouched_when_resumed_or_rerun(tiny_digits_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_digits_run, run_dir)
    before = snapshot(run_dir)

    # A requeued job that had already finished: says so, exits 0, writes nothing.
    again = train_here("ckpt_path=last", f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert "holds a finished run" in again.stdout
    assert snapshot(run_dir) == before

    # Another run into it is refused before Hydra's or the run's files are written.
    refused = train_here("seed=7", "loss.sim_coeff=10", f"hydra.run.dir={run_dir}")
    assert refused.returncode == 2
    assert "already holds a finished run" in refused.stderr and "ckpt_path=" in refused.stderr
    assert snapshot(run_dir) == before


def test_a_second_run_into_a_directory_in_use_is_refused_and_changes_nothing(tiny_digits_run, tmp_path):
    import os

    from vicreg_lightning.train import run

    run_dir = unfinished_copy(tiny_digits_run, tmp_path / "run")
    with held(run_dir):  # as the first run holds it, for as long as it runs
        before = snapshot(run_dir)
        for ckpt_path in ("ckpt_path=null", "ckpt_path=last"):
            with pytest.raises(RunDirRefused, match=rf"is in use by another run \(process {os.getpid()}\); wait for it "
                                                    "to end, or choose a new hydra.run.dir"):
                run(compose_train(*TINY, ckpt_path, f"paths.output_dir={run_dir}"))
        assert snapshot(run_dir) == before
    assert not (run_dir / ".lock").exists()


def test_another_runs_checkpoint_into_an_unfinished_run_is_refused(tiny_digits_run, tmp_path):
    from vicreg_lightning.train import run

    run_dir = unfinished_copy(tiny_digits_run, tmp_path / "run")
    before = snapshot(run_dir)
    other = tiny_digits_run / "checkpoints" / "last.ckpt"
    with pytest.raises(RunDirRefused, match=rf"holds the checkpoints of an unfinished run, which "
                                            rf"ckpt_path='{other}' would replace; resume that run with ckpt_path=last"):
        run(compose_train(*TINY, f"ckpt_path={other}", f"paths.output_dir={run_dir}"))
    assert snapshot(run_dir) == before
    # One of its own checkpoints is this run's to resume from.
    assert claim(run_dir, str(run_dir / "checkpoints" / "last.ckpt"))


def test_an_evaluation_into_a_training_runs_directory_is_refused(tiny_digits_run, tmp_path):
    from vicreg_lightning.evaluate import run

    run_dir = unfinished_copy(tiny_digits_run, tmp_path / "run")
    before = snapshot(run_dir)
    with pytest.raises(RunDirRefused, match="holds a train run; evaluate into a new hydra.run.dir"):
        run(compose_eval(f"weights={tiny_digits_run}", "eval=knn", f"paths.output_dir={run_dir}"))
    assert snapshot(run_dir) == before
    # And a training run into an evaluation's directory.
    eval_dir = tmp_path / "eval"
    (eval_dir / ".hydra").mkdir(parents=True)
    (eval_dir / ".hydra" / "config.yaml").write_text("task_name: eval\n")
    with pytest.raises(RunDirRefused, match=r"holds the directory of another task \(eval\)"):
        claim(eval_dir, None)


@pytest.mark.parametrize("where", ["a file", "/proc"])
def test_a_run_directory_that_cannot_be_written_is_refused_in_one_line(tmp_path, where):
    from vicreg_lightning.train import run

    run_dir = Path("/proc/vicreg-run") if where == "/proc" else tmp_path / "taken"
    if where == "a file":
        run_dir.write_bytes(b"a file")
    message = "cannot write there" if where == "/proc" else "is a file, not a folder"
    with pytest.raises(RunDirRefused, match=message):
        run(compose_train(*TINY, f"paths.output_dir={run_dir}"))
    assert where == "/proc" or run_dir.read_bytes() == b"a file"


def test_the_config_of_an_attempt_that_saved_nothing_is_replaced_by_the_next(tmp_path):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from tests.runs import CONF

    def attempt(*overrides: str) -> None:
        """save_job_config as the job of ``train.py <overrides>`` calls it, in this process."""
        with initialize_config_dir(str(CONF), version_base="1.3"):
            cfg = compose("train", overrides=[*TINY, *overrides], return_hydra_config=True)
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path)
        HydraConfig.instance().set_config(cfg)
        try:
            with open_dict(cfg):
                del cfg["hydra"]
            save_job_config(cfg)
        finally:
            HydraConfig.instance().cfg = None

    attempt("loss.sim_coeff=10")  # refused later, at the data check: it saved nothing
    (tmp_path / "failure.json").write_text("{}")
    attempt("loss.sim_coeff=20")
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").loss.sim_coeff == 20
    assert list(OmegaConf.load(tmp_path / ".hydra" / "overrides.yaml")) == [*TINY, "loss.sim_coeff=20"]
    assert not (tmp_path / "failure.json").exists()
    # Once the run has saved a checkpoint, its config describes how it began: a resume keeps it.
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    attempt("loss.sim_coeff=30", "ckpt_path=last")
    assert OmegaConf.load(tmp_path / ".hydra" / "config.yaml").loss.sim_coeff == 20
