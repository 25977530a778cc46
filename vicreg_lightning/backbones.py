"""Backbones: any image encoder that maps ``(N, 3, H, W)`` images to ``(N, F)`` features.

``model.backbone`` is one of three kinds, built by :func:`build_backbone`:

- a torchvision ResNet name (``resnet50``; ``resnet10`` for quick CPU runs), classifier removed;
  its weights load into ``torchvision.models.<name>()`` once ``fc`` is an ``Identity``;
- ``timm:<model name>``, any model of timm (Wightman, "PyTorch Image Models"): built with
  ``pretrained=False`` (nothing is downloaded), ``num_classes=0`` (its pooled pre-logits are the
  features), the crop size as ``img_size`` where the model takes one, ``model.pool`` as its
  ``global_pool``, and ``model.backbone_kwargs`` (patch size, depth, drop-path rate, ...);
- ``{_target_: package.module.callable, ...}``, a user's own: the callable (with the entry's other
  keys and ``model.backbone_kwargs`` as arguments) returns an ``nn.Module`` mapping images to
  ``(N, F)`` features.

``F`` is measured once on a batch of blank images, which also checks the output's shape, so a
wrong encoder fails before training with one line. ``model.init_weights`` starts the backbone from
a local state dict (:func:`load_init_weights`).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn

from vicreg_lightning.choices import SMALL_RESNETS, TIMM_PREFIX, backbone_kind, resnet_names
from vicreg_lightning.errors import ConfigError
from vicreg_lightning.run_dir import read_torch_file
from vicreg_lightning.weights import weight_mismatches

_TIMM_POOL = {"cls": "token", "avg": "avg"}  # model.pool as timm's global_pool

# At or below this crop size the ImageNet stem (7x7/2 conv + max-pool) would shrink the image to
# a few pixels before layer 1, so the backbone uses a 3x3/1 stem unless told otherwise.
SMALL_IMAGE_SIZE = 64


class Backbone(NamedTuple):
    """A built backbone, its feature width, and what it is."""

    module: nn.Module
    feature_dim: int
    arch: str  # the ResNet name, timm:<name>, or the _target_ path
    timm: dict[str, Any] | None  # {"model_name", "kwargs"}: timm.create_model(model_name, **kwargs)


def backbone_arch(spec: Any) -> str:
    """The name an export records: the ResNet name, ``timm:<name>`` or the ``_target_`` path."""
    return spec["_target_"] if backbone_kind(spec) == "target" else spec


def uses_small_stem(small_stem: bool | None, image_size: int) -> bool:
    """``model.small_stem``, or when it is null the choice for ``augment.size``."""
    return image_size <= SMALL_IMAGE_SIZE if small_stem is None else small_stem


def is_convnet(module: nn.Module) -> bool:
    """More than one 2-D convolution: a network that channels-last memory speeds up (a ViT's single
    convolution is its patch embedding)."""
    return sum(isinstance(m, nn.Conv2d) for m in module.modules()) > 1


def build_backbone(model: Mapping[str, Any], image_size: int, any_image_size: bool = False) -> Backbone:
    """The randomly initialised backbone of ``model`` (the ``conf/model`` keys ``backbone``,
    ``backbone_kwargs``, ``pool``, and for a ResNet ``small_stem`` and ``zero_init_residual``; their
    values are the presets', not repeated here) for square crops of ``image_size`` px;
    ``any_image_size``: it must also take other sizes (local crops)."""
    spec, kwargs, pool = model["backbone"], dict(model["backbone_kwargs"]), model["pool"]
    kind = backbone_kind(spec)
    if kind == "resnet":
        if kwargs or pool == "cls":
            raise ConfigError(f"model.backbone={spec}: a torchvision ResNet takes no model.backbone_kwargs and has no "
                              "class token (model.pool auto or avg); use a timm: backbone for other settings")
        module, timm_call = build_resnet(spec, uses_small_stem(model["small_stem"], image_size),
                                         model["zero_init_residual"]), None
    elif kind == "timm":
        module, timm_call = _build_timm(spec[len(TIMM_PREFIX):], kwargs, pool, image_size, any_image_size)
    else:
        module, timm_call = _build_target(spec, kwargs, pool), None
    return Backbone(module, measure_feature_dim(module, spec, image_size), backbone_arch(spec), timm_call)


def build_resnet(name: str, small_stem: bool = False, zero_init_residual: bool = True) -> nn.Module:
    """A torchvision ResNet with ``fc = Identity``.

    ``zero_init_residual`` starts each residual branch's last BN at zero, as the official code.
    ``small_stem`` swaps the 7×7/2 convolution and max-pool for a 3×3/1 convolution, the usual stem
    for 32-px (CIFAR-size) and smaller images, which would otherwise shrink to 1 px by layer 3.
    """
    import torchvision
    from torchvision.models.resnet import BasicBlock, ResNet

    if name not in resnet_names():
        backbone_kind(name)  # raises, naming the choices
    if name in SMALL_RESNETS:
        net = ResNet(BasicBlock, SMALL_RESNETS[name], zero_init_residual=zero_init_residual)
    else:
        net = torchvision.models.get_model(name, weights=None, zero_init_residual=zero_init_residual)
    if small_stem:
        net.conv1 = nn.Conv2d(3, net.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    return net


def _build_timm(name: str, kwargs: dict[str, Any], pool: str, image_size: int, any_image_size: bool
                ) -> tuple[nn.Module, dict[str, Any]]:
    import timm

    shown = f"model.backbone={TIMM_PREFIX}{name}"
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else "; timm.list_models() lists them"
        raise ConfigError(f"{shown}: timm has no such model{hint}")
    call = {"num_classes": 0, **({"global_pool": _TIMM_POOL[pool]} if pool != "auto" else {}), **kwargs}
    # Models with a fixed grid of patches (ViTs) are built for the crop size; others take any size.
    sized = {"img_size": image_size, **({"dynamic_img_size": True} if any_image_size else {})}
    try:
        try:
            module = timm.create_model(name, pretrained=False, **sized, **call)
            call = {**sized, **call}
        except TypeError as e:
            if "img_size" not in str(e):
                raise
            module = timm.create_model(name, pretrained=False, **call)
    except (TypeError, ValueError, AssertionError, RuntimeError) as e:
        given = f" with model.backbone_kwargs={kwargs}" if kwargs else ""
        given += " with model.pool=cls (a class token; use auto or avg)" if pool == "cls" else ""
        raise ConfigError(f"{shown}: timm cannot build it{given} ({type(e).__name__}: {_first_line(e)})") from None
    return module, {"model_name": name, "kwargs": call}


def _build_target(spec: Mapping[str, Any], kwargs: dict[str, Any], pool: str) -> nn.Module:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = spec["_target_"]
    if pool != "auto":
        raise ConfigError(f"model.pool={pool}: a _target_ backbone pools its own features; set model.pool=auto")
    try:
        module = instantiate({**dict(spec), **kwargs})
    except InstantiationException as e:
        raise ConfigError(f"model.backbone._target_={target}: cannot build it ({_first_line(e)})") from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f"model.backbone._target_={target}: returned a {type(module).__name__}, not a "
                          "torch.nn.Module mapping images to (N, F) features")
    return module


def measure_feature_dim(module: nn.Module, spec: Any, image_size: int) -> int:
    """``F`` of a backbone: its output on two blank images, which must be ``(2, F)``."""
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            out = module(torch.zeros(2, 3, image_size, image_size))
    except Exception as e:  # noqa: BLE001 - any failure of a user's module is reported as its own
        raise ConfigError(f"model.backbone={_shown(spec)}: fails on a batch of {image_size}-px images "
                          f"({type(e).__name__}: {_first_line(e)})") from None
    finally:
        for m, training in modes.items():
            m.train(training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"model.backbone={_shown(spec)}: its output for 2 images is {got}, not (N, F) features; "
                          "pool and flatten them in the module (e.g. end it with nn.Flatten())")
    return int(out.shape[1])


# Where a training checkpoint's state dict keeps the backbone (VICRegModule.backbone).
TRAINED_BACKBONE = "backbone."


def load_init_weights(module: nn.Module, path: str, arch: str) -> None:
    """``model.init_weights``: a local state dict (torchvision's or timm's, an export's
    ``backbone.pt``, or a training checkpoint's backbone) loaded with ``strict=True``. Classifier weights that the backbone no longer
    has (``fc.*``, timm's ``head.*``) are dropped; any other difference is an error naming it."""
    shown = f"model.init_weights={path!r}"
    if not Path(path).is_file():
        raise ConfigError(f"{shown}: no such file; give a state dict saved with torch.save")
    state = read_torch_file(Path(path), shown, error=ConfigError)
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping):
        raise ConfigError(f"{shown}: a {type(state).__name__}, not a state dict")
    expected = module.state_dict()
    if not expected.keys() & state.keys() and any(k.startswith(TRAINED_BACKBONE) for k in state):
        # A training checkpoint (<run dir>/checkpoints/*.ckpt): its backbone's weights.
        state = {k[len(TRAINED_BACKBONE):]: v for k, v in state.items() if k.startswith(TRAINED_BACKBONE)}
    classifier = _classifier_prefixes(module)
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(classifier)}
    problems = weight_mismatches(expected, state)
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise ConfigError(f"{shown}: not weights of {arch} as configured ({problems[0]}{more})")
    module.load_state_dict(state, strict=True)


def _classifier_prefixes(module: nn.Module) -> tuple[str, ...]:
    classifier = getattr(module, "pretrained_cfg", {}).get("classifier") if hasattr(module, "pretrained_cfg") else None
    names = classifier if isinstance(classifier, (list, tuple)) else [classifier or "head"]
    return tuple(f"{name}." for name in [*names, "fc"])


def _shown(spec: Any) -> str:
    return spec["_target_"] if isinstance(spec, Mapping) else str(spec)


def _first_line(error: BaseException) -> str:
    """The error's message on one line (Hydra's instantiation errors span several)."""
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip())[:300] or type(error).__name__
