"""Digits runs with and without loader workers reach the same probe accuracy (the views
themselves: tests/unit/test_sampler.py)."""

from __future__ import annotations

from tests.runs import compose_train
from vicreg_lightning.train import run


def test_digits_runs_with_and_without_loader_workers_reach_the_same_probe_accuracy(tmp_path):
    shrink = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "trainer.enable_progress_bar=false",
              "callbacks.representation_health=null"]
    without = run(compose_train(*shrink, "data.num_workers=0", f"paths.output_dir={tmp_path / 'none'}"))
    with_workers = run(compose_train(*shrink, "data.num_workers=2", f"paths.output_dir={tmp_path / 'two'}"))
    assert without["step"] == with_workers["step"] == 6
    assert without["val/probe_acc1"] == with_workers["val/probe_acc1"]
    assert without["train/loss"] == with_workers["train/loss"]
