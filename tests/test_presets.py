"""Every shipped config composes against its schema and passes the checks; every experiment preset
trains (shrunk)."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from tests.fake_data import write_cifar, write_image_folder, write_imagenet, write_stl10
from tests.runs import CONF, compose_train, shrink
from vicreg_lightning.config import SCHEMAS, check_config
from vicreg_lightning.backbones import uses_small_stem
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


@pytest.mark.parametrize("group", ["data", "augment", "model", "loss", "optim", "paths", "trainer", "logger",
                                   "callbacks"])
def test_every_group_option_passes_the_schema(group):
    """Each preset is composed against its group's schema (Hydra checks keys and types as it
    composes), and the whole config then passes the checks."""
    options = sorted(p.stem for p in (CONF / group).glob("*.yaml"))
    assert options
    for option in options:
        cfg = compose_train("~experiment", f"{group}={option}", "paths.output_dir=/tmp/unused", "data.root=/tmp/unused")
        if group in SCHEMAS:
            assert OmegaConf.get_type(cfg[group]) is SCHEMAS[group], f"{group}={option} does not start from its schema"
        check_config(cfg)


def test_data_sets_pick_their_augmentation():
    sizes = {name: compose_train(f"data={name}", "paths.output_dir=x", "data.root=x").augment.size
             for name in ("digits", "cifar10", "stl10", "imagenet")}
    assert sizes == {"digits": 32, "cifar10": 32, "stl10": 96, "imagenet": 224}
    assert compose_train("data=cifar10", "augment=official", "paths.output_dir=x").augment.size == 224


def test_imagenet_preset_is_the_official_recipe():
    cfg = check_config(compose_train("experiment=imagenet_resnet50", "paths.output_dir=x"))
    assert (cfg.data.batch_size, cfg.optim.base_lr, cfg.optim.weight_decay) == (2048, 0.2, 1e-6)
    assert cfg.model.backbone == "resnet50" and cfg.model.expander == "8192-8192-8192"
    assert cfg.optim.name == "lars" and cfg.trainer.max_epochs == 1000 and not uses_small_stem(cfg.model.small_stem, cfg.augment.size)
    assert (cfg.augment.view_a.blur_prob, cfg.augment.view_b.blur_prob) == (1.0, 0.1)
    assert (cfg.augment.view_a.solarize_prob, cfg.augment.view_b.solarize_prob) == (0.0, 0.2)
    assert list(cfg.augment.crop_scale) == [0.08, 1.0]


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
