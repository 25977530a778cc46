"""Every shipped config composes against its schema and passes the checks; data sets pick their
augmentation; the ImageNet preset is the official recipe."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from tests.runs import CONF, compose_train
from vicreg_lightning.config import SCHEMAS, check_config
from vicreg_lightning.backbones import uses_small_stem


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
