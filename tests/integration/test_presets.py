"""Every experiment preset trains (shrunk to seconds, on fake data in its real on-disk format)."""

from __future__ import annotations

import json

import pytest

from tests.fake_data import write_cifar, write_image_folder, write_imagenet, write_stl10
from tests.runs import CONF, compose_train, shrink
from vicreg_lightning.train import run


EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
FAKE_DATA = {
    "digits": lambda root: root,
    "cifar10": lambda root: write_cifar(root, 10),
    "cifar100": lambda root: write_cifar(root, 100),
    "stl10": write_stl10,
    "imagenet": write_imagenet,
    "imagefolder": lambda root: write_image_folder(root / "train", classes=3, per_class=8).parent,
}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_preset_trains(experiment, tmp_path, skip_integrity_checks):
    data_name = compose_train(f"experiment={experiment}", "paths.output_dir=x").data.name
    root = FAKE_DATA[data_name](tmp_path / "data")
    cfg = compose_train(f"experiment={experiment}", *shrink(root, tmp_path / "run"))
    metrics = run(cfg)
    assert metrics["step"] == 2 and 0.0 <= metrics["val/probe_acc1"] <= 1.0
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["train/loss"] == pytest.approx(metrics["train/loss"])
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").exists()
