"""A run whose two views are made on the device (kornia) trains: the augmentation's other
properties are checked without a run in tests/unit/test_augment.py."""

from __future__ import annotations

import math


def test_a_run_with_views_made_on_the_device_trains(tmp_path):
    """The whole path under a real Trainer: uint8 batches, kornia views in on_after_batch_transfer."""
    from tests.runs import compose_train, shrink
    from vicreg_lightning.train import run

    metrics = run(compose_train(*shrink(tmp_path, tmp_path / "run"), "augment.on_device=true"))
    assert math.isfinite(metrics["train/loss"]) and metrics["step"] == 2
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()
