"""A config as Hydra composes it, outside a Hydra job too: ``conf/train.yaml`` with overrides, or one
group's preset as a plain dict for building parts in Python (tests, notebooks, benchmarks)."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def preset(group: str, option: str, *changes: str) -> dict[str, Any]:
    """``conf/<group>/<option>.yaml`` as composed, with ``changes`` (``key=value`` within the group),
    resolved to a plain dict for building parts (``VICRegModule(model=preset("model", "resnet18"), ...)``)."""
    cfg = compose_train_config("~experiment", f"{group}={option}", *(f"{group}.{change}" for change in changes))
    return OmegaConf.to_container(cfg[group], resolve=True)


def compose_train_config(*overrides: str) -> DictConfig:
    """``conf/train.yaml`` with ``overrides`` as Hydra composes it, also inside a Hydra job."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    overrides = [*overrides, "paths.output_dir=unused"]
    if GlobalHydra.instance().is_initialized():  # eval.py, train.py: their search path holds conf/
        return compose("train", overrides=overrides)
    with initialize_config_module("vicreg_lightning.conf", version_base="1.3"):
        return compose("train", overrides=overrides)
