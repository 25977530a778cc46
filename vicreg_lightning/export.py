"""Ship a pretrained encoder: ``python -m vicreg_lightning.export <weights> <out dir>``.

``<weights>`` is a training checkpoint (``<run dir>/checkpoints/*.ckpt``), a run directory (its
``checkpoints/last.ckpt``) or an export folder. The export folder holds:

``backbone.pt``
    The backbone's ``state_dict``. A timm backbone's loads into
    ``timm.create_model(info["timm"]["model_name"], **info["timm"]["kwargs"])`` with ``strict=True``
    (``vicreg.json`` records the exact call: ``num_classes=0``, the image size, the pooling and
    ``model.backbone_kwargs``); a ``_target_`` backbone's into what its ``backbone`` entry builds.
    A ResNet's has exactly torchvision's keys for ``torchvision.models.<arch>()``
    without ``fc.*`` (the backbone is trained with ``fc = Identity``: VICReg ships the 2048-d pooled
    features of a ResNet-50, Bardes, Ponce, LeCun, ICLR 2022, §4.2). It loads with
    ``strict=True`` once ``fc`` is replaced the same way::

        model = torchvision.models.resnet50()
        model.fc = torch.nn.Identity()
        model.load_state_dict(torch.load("backbone.pt"), strict=True)

    With ``"small_stem": true`` in ``vicreg.json`` also replace the stem first, as training did::

        model.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = torch.nn.Identity()

    ``resnet10`` (not in torchvision.models) is ``torchvision.models.resnet.ResNet(BasicBlock,
    [1, 1, 1, 1])``. :func:`load_encoder` does all of this.
``expander.pt``
    The expander's ``state_dict`` (``Linear-BN-ReLU`` × (k−1), then ``Linear`` without bias), for
    :func:`vicreg_lightning.expander.build_expander` with the ``expander`` spec of ``vicreg.json``.
``vicreg.json``
    What the weights are: architecture (``arch``; ``backbone``, ``backbone_kwargs``, ``pool``,
    ``image_size`` as configured; ``timm``), stem, feature and embedding widths, the training data and
    augmentations, loss coefficients, optimiser, epoch and step, the run's final metrics and the
    code version.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import nn

import vicreg_lightning
from vicreg_lightning.backbones import Backbone, backbone_arch, build_backbone
from vicreg_lightning.choices import backbone_kind, parse_expander_spec
from vicreg_lightning.errors import UserError
from vicreg_lightning.expander import build_expander
from vicreg_lightning.run_dir import CHECKPOINT_DIR, METRICS_FILE, read_torch_file, run_dir_of
from vicreg_lightning.weights import weight_mismatches

BACKBONE_FILE = "backbone.pt"
EXPANDER_FILE = "expander.pt"
SIDECAR_FILE = "vicreg.json"
FORMAT = "vicreg-lightning-encoder"
FORMAT_VERSION = 2
# Where a run directory keeps the checkpoint that ``weights=<run dir>`` means.
LAST_CHECKPOINT = Path(CHECKPOINT_DIR) / "last.ckpt"


def load_encoder(path: str | Path, arch: str | None = None) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
    """``(backbone, expander, info)`` from an export folder, a training checkpoint or a run
    directory: the modules in eval mode on the CPU with the trained weights (``expander`` is None
    for an export folder without ``expander.pt``), and ``info``, the content of ``vicreg.json``.

    ``arch``, when given, is the backbone the caller expects (``"resnet50"``): weights of another
    architecture are refused. Anything unreadable or inconsistent raises :class:`UserError` with one
    line that starts with the path."""
    path = Path(path)
    shown = repr(str(path))
    if path.is_dir() and not (path / BACKBONE_FILE).is_file():
        if not (path / LAST_CHECKPOINT).is_file():
            raise UserError(
                f"{shown}: no {BACKBONE_FILE} in this folder, and no {LAST_CHECKPOINT}: pass an export folder "
                "(python -m vicreg_lightning.export), a run directory or a .ckpt file"
            )
        path = path / LAST_CHECKPOINT
    backbone, expander, info = _load_export(path) if path.is_dir() else _load_checkpoint(path)
    if arch is not None and info["arch"] != arch:
        raise UserError(f"{str(path)!r}: holds a {info['arch']} backbone{_stem(info)}, not the arch={arch} asked for")
    backbone.eval()
    if expander is not None:
        expander.eval()
    return backbone, expander, info


def export(weights: str | Path, out_dir: str | Path) -> Path:
    """Write ``backbone.pt``, ``expander.pt`` and ``vicreg.json`` of ``weights`` into ``out_dir``
    (created); no file there is overwritten (an existing export, or a user's own files of those
    names). Returns ``out_dir``."""
    out_dir = Path(out_dir)
    if (out_dir / SIDECAR_FILE).exists():
        raise UserError(f"{str(out_dir)!r} already holds an export ({SIDECAR_FILE}); choose a new folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{str(out_dir)!r} is a file, not a folder; choose a new folder for the export")
    theirs = [name for name in (BACKBONE_FILE, EXPANDER_FILE) if (out_dir / name).exists()]
    if theirs:  # an export writes its files only into a folder that has none of them
        raise UserError(f"{str(out_dir)!r} already holds {', '.join(theirs)}, which the export would replace; choose "
                        "a new folder")
    backbone, expander, info = load_encoder(weights)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(backbone.state_dict(), out_dir / BACKBONE_FILE)
        if expander is not None:
            torch.save(expander.state_dict(), out_dir / EXPANDER_FILE)
        # The sidecar last: a folder with vicreg.json is a complete export.
        (out_dir / SIDECAR_FILE).write_text(json.dumps(info, indent=2) + "\n")
    except (OSError, RuntimeError) as e:  # torch.save reports a failed write as a RuntimeError
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).splitlines()[0]
        raise UserError(f"{str(out_dir)!r}: cannot write the export there ({reason}); choose a writable folder") from None
    return out_dir


def _describe_checkpoint(checkpoint: Mapping[str, Any], path: Path) -> dict[str, Any]:
    """``vicreg.json`` for a training checkpoint: its hyper-parameters, plus the data set,
    augmentations, schedule and final metrics of the run directory it sits in (``None`` where the
    checkpoint was moved away from ``.hydra/config.yaml`` and ``metrics.json``)."""
    hparams = checkpoint["hyper_parameters"]
    model = hparams["model"]
    run_dir = run_dir_of(path)
    run_cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml") if run_dir else None
    metrics_file = run_dir / METRICS_FILE if run_dir else None
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": backbone_arch(model["backbone"]),
        "backbone": model["backbone"],
        "backbone_kwargs": dict(model.get("backbone_kwargs") or {}),
        "pool": model.get("pool", "auto"),
        "image_size": hparams.get("image_size"),
        "local_crop_size": hparams.get("local_crop_size"),
        "timm": None,  # the timm.create_model call, filled in once the backbone is built
        "small_stem": bool(model["small_stem"]),
        # The expander's first layer reads the backbone's pooled features.
        "feature_dim": int(checkpoint["state_dict"]["expander.0.weight"].shape[1]),
        "expander": str(model["expander"]),
        "embedding_dim": parse_expander_spec(model["expander"])[-1],
        "zero_init_residual": model["zero_init_residual"],
        # Resolved (data.root may be ${paths.data_dir}); a whole section, so eval.py can rebuild it.
        "data": _resolved(run_cfg, "data"),
        "augment": _resolved(run_cfg, "augment"),
        "loss": dict(hparams["loss"]),
        "optim": dict(hparams["optim"]),
        "batch_size": hparams["batch_size"],
        "num_classes": hparams["num_classes"],
        "seed": run_cfg.get("seed") if run_cfg else None,
        # Lightning's counters: epoch is 0-based and counts the epoch the checkpoint was taken in.
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        "max_epochs": _resolved(run_cfg, "trainer.max_epochs"),
        "metrics": json.loads(metrics_file.read_text()) if metrics_file and metrics_file.is_file() else None,
        "checkpoint": str(path.resolve()),
        "code_version": _code_version(),
    }


def _code_version() -> dict[str, Any]:
    """This package's version, and the git commit of its source tree with whether the tree had
    uncommitted changes (``None`` for an installed wheel, or without git). The training run records
    no commit of its own, so this is the code that exported the weights."""
    source = Path(vicreg_lightning.__file__).resolve().parent
    version: dict[str, Any] = {"package": vicreg_lightning.__version__, "git_commit": None, "git_dirty": None}

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", "-C", str(source), *args], capture_output=True, text=True, timeout=10)

    try:
        # A wheel installed inside some other repository must not report that repository's commit.
        if git("ls-files", "--error-unmatch", "__init__.py").returncode != 0:
            return version
        commit, status = git("rev-parse", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return version
    if commit.returncode == 0:
        version["git_commit"] = commit.stdout.strip()
        version["git_dirty"] = bool(status.stdout.strip()) if status.returncode == 0 else None
    return version


def _resolved(cfg: Any, key: str) -> Any:
    node = OmegaConf.select(cfg, key) if cfg is not None else None
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def _read(path: Path) -> Any:
    return read_torch_file(path, repr(str(path)))


def _load_checkpoint(path: Path) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    shown = repr(str(path))
    checkpoint = _read(path)
    hparams = checkpoint.get("hyper_parameters") if isinstance(checkpoint, dict) else None
    if (not isinstance(hparams, dict) or "model" not in hparams
            or "expander.0.weight" not in checkpoint.get("state_dict", {})):
        raise UserError(f"{shown}: not a vicreg-lightning training checkpoint (no hyper_parameters.model); "
                        "pass one from <run dir>/checkpoints/")
    info = _describe_checkpoint(checkpoint, path)
    backbone, expander = build_from_info(info)
    info["timm"] = backbone.timm
    backbone = backbone.module
    state = checkpoint["state_dict"]
    for prefix, module in (("backbone.", backbone), ("expander.", expander)):
        part = {name[len(prefix):]: t for name, t in state.items() if name.startswith(prefix)}
        _load_exactly(module, part, f"{shown}: its {prefix[:-1]} weights do not match its own hyper-parameters "
                                    f"({info['arch']}, expander {info['expander']})")
    return backbone, expander, info


def _load_export(folder: Path) -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
    shown = repr(str(folder))
    sidecar = folder / SIDECAR_FILE
    if not sidecar.is_file():
        raise UserError(f"{shown}: no {SIDECAR_FILE} next to {BACKBONE_FILE}; re-export with python -m "
                        "vicreg_lightning.export")
    try:
        info = json.loads(sidecar.read_text())
        info["arch"], info["small_stem"], info["expander"]  # noqa: B018 - the keys the modules need
    except (ValueError, KeyError, TypeError) as e:
        raise UserError(f"{str(sidecar)!r}: not a readable {SIDECAR_FILE} ({type(e).__name__}: {e})") from None
    backbone, expander = build_from_info(info)
    backbone = backbone.module
    _load_exactly(backbone, _read(folder / BACKBONE_FILE),
                  f"{str(folder / BACKBONE_FILE)!r}: does not match {info['arch']}{_stem(info)} of {SIDECAR_FILE}")
    if not (folder / EXPANDER_FILE).is_file():
        return backbone, None, info
    _load_exactly(expander, _read(folder / EXPANDER_FILE),
                  f"{str(folder / EXPANDER_FILE)!r}: does not match expander {info['expander']} of {SIDECAR_FILE}")
    return backbone, expander, info


def build_from_info(info: Mapping[str, Any]) -> tuple[Backbone, nn.Module]:
    """The backbone and expander that ``info`` (``vicreg.json``) describes, randomly initialised."""
    try:
        backbone = build_backbone(backbone_section(info), info.get("image_size") or 224,
                                  any_image_size=info.get("local_crop_size") is not None)
        return backbone, build_expander(backbone.feature_dim, info["expander"])
    except UserError as e:
        raise UserError(f"the weights' architecture cannot be built here: {e}") from None


def backbone_section(info: Mapping[str, Any]) -> dict[str, Any]:
    """The ``conf/model`` keys of :func:`~vicreg_lightning.backbones.build_backbone` that ``info``
    records (an export of format 1 has ResNet keys alone)."""
    return {"backbone": info.get("backbone", info["arch"]), "backbone_kwargs": info.get("backbone_kwargs") or {},
            "pool": info.get("pool", "auto"), "small_stem": bool(info["small_stem"]),
            "zero_init_residual": info.get("zero_init_residual", True)}


def _stem(info: Mapping[str, Any]) -> str:
    """`` (3x3 stem)`` or `` (ImageNet stem)`` for a ResNet: which one tells two exports apart."""
    if backbone_kind(info.get("backbone", info["arch"])) != "resnet":
        return ""
    return " (3x3 stem)" if info["small_stem"] else " (ImageNet stem)"


def _load_exactly(module: nn.Module, state_dict: Mapping[str, Any], mismatch: str) -> None:
    """``module.load_state_dict(state_dict, strict=True)``, or one line: ``mismatch`` and the first
    difference."""
    if not isinstance(state_dict, Mapping):
        raise UserError(f"{mismatch} (a {type(state_dict).__name__}, not a state_dict)")
    problems = weight_mismatches(module.state_dict(), state_dict)
    if problems:
        more = f" and {len(problems) - 1} more" if len(problems) > 1 else ""
        raise UserError(f"{mismatch} ({problems[0]}{more})")
    module.load_state_dict(state_dict, strict=True)


if __name__ == "__main__":  # python -m vicreg_lightning.export: the vicreg-export command
    from vicreg_lightning.cli import export as export_command

    sys.exit(export_command())
