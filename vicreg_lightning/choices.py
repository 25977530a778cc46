"""The values a config chooses among: loss weightings, poolings, optimisers, backbone names, how
the views go through the encoder, and the expander's spec.

The config's checks (:mod:`vicreg_lightning.config`) test a command line against these before
anything heavy loads, so they live here, without torch (which takes seconds to import); the modules
that implement each choice (:mod:`~vicreg_lightning.loss`, :mod:`~vicreg_lightning.backbones`,
:mod:`~vicreg_lightning.optim`, :mod:`~vicreg_lightning.expander`, :mod:`~vicreg_lightning.module`)
import them from here, so that each list is written once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vicreg_lightning.errors import ConfigError

WEIGHTINGS: tuple[str, ...] = ("official", "paper")  # loss.weighting (VICRegLoss's docstring says how they differ)
OPTIMIZERS: tuple[str, ...] = ("lars", "sgd", "adamw")  # optim.name
# model.pool: the model's own pooling (auto), its class token (cls) or the mean of its spatial
# positions or patch tokens (avg).
POOLS: tuple[str, ...] = ("auto", "cls", "avg")
VIEWS_FORWARD: tuple[str, ...] = ("auto", "separate", "concat")  # model.views_forward (VICRegModule)

TIMM_PREFIX = "timm:"  # model.backbone=timm:<model name>
# The ResNet-family constructors of torchvision.models (tests/test_backbones.py checks this against
# torchvision.models.list_models), listed so that checking model.backbone imports no torchvision.
TORCHVISION_RESNETS: tuple[str, ...] = (
    "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
)
# ResNet-10 (one BasicBlock per stage) is torchvision's ResNet class at the smallest depth: a
# third of ResNet-18's cost, for quick runs on a CPU (the default digits run). Its weights load
# into ``torchvision.models.resnet.ResNet(BasicBlock, [1, 1, 1, 1])``.
SMALL_RESNETS: dict[str, list[int]] = {"resnet10": [1, 1, 1, 1]}


def resnet_names() -> list[str]:
    """The torchvision ResNets ``model.backbone`` accepts."""
    return sorted([*TORCHVISION_RESNETS, *SMALL_RESNETS])


def backbone_kind(spec: Any) -> str:
    """``resnet``, ``timm`` or ``target`` (a ``{_target_: ...}`` entry); a :class:`ConfigError` for
    anything else."""
    if isinstance(spec, Mapping):
        if isinstance(spec.get("_target_"), str) and spec["_target_"]:
            return "target"
    elif isinstance(spec, str):
        if spec.startswith(TIMM_PREFIX) and len(spec) > len(TIMM_PREFIX):
            return "timm"
        if spec in resnet_names():
            return "resnet"
    raise ConfigError(
        f"model.backbone={spec!r}: expected a torchvision ResNet ({', '.join(resnet_names())}), timm:<model name> "
        "(timm:vit_small_patch16_224), or an entry with _target_ (a callable returning an nn.Module)"
    )


def parse_expander_spec(spec: str | int) -> list[int]:
    """``model.expander``: ``"8192-8192-8192"`` → ``[8192, 8192, 8192]`` (the layers' output widths)."""
    parts = str(spec).split("-")
    if not all(p.isdigit() and int(p) > 0 for p in parts):
        raise ConfigError(
            f"model.expander={spec!r}: expected dash-separated positive integers, e.g. 8192-8192-8192"
        )
    return [int(p) for p in parts]
