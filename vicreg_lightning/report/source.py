"""What the report reads: the encoder to report on (a checkpoint, a run directory or an export
folder, with its run's checked ``data`` and ``augment`` sections), an untrained twin of its
architecture, its features and embeddings on a capped data set, and where the report goes by
default."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import Dataset, Subset

from vicreg_lightning.errors import UserError
from vicreg_lightning.evaluate.config import check_run_sections
from vicreg_lightning.export import build_from_info, load_encoder
from vicreg_lightning.features import Features, extract_features, make_loader
from vicreg_lightning.run_dir import run_dir_of

SPACES: tuple[str, ...] = ("features", "embeddings")


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class LoadedEncoder:
    """An encoder to report on (modules in eval mode), the run's checked ``data`` and ``augment``
    sections, and ``info``: what the loader knows of the weights (``vicreg.json``'s keys: ``arch``,
    ``small_stem``, ``zero_init_residual``, ``expander``, ``metrics``, ...)."""

    backbone: nn.Module
    expander: nn.Module | None
    data: DictConfig
    augment: DictConfig
    info: dict[str, Any]
    source: Path
    loaded_with: str

    @property
    def run_dir(self) -> Path | None:
        """The training run directory the weights were given in (not the one an export came from)."""
        if self.source.is_file():
            return run_dir_of(self.source)
        return self.source if (self.source / ".hydra" / "config.yaml").is_file() else None


def _checked_sections(info: dict[str, Any], source: Path, data_name: str | None, data_root: str | None
                      ) -> tuple[DictConfig, DictConfig]:
    """The run's ``data`` and ``augment``, with ``--data``/``--data-root`` over them, checked as
    ``train.py`` checks them."""
    if not info.get("data") or not info.get("augment"):
        raise UserError(
            f"{str(source)!r}: the training run's data and augmentation recipe are unknown (no .hydra/config.yaml "
            "in its run directory, none in vicreg.json); pass a checkpoint inside its run directory"
        )
    data = OmegaConf.merge(info["data"], {k: v for k, v in (("name", data_name), ("root", data_root)) if v})
    return check_run_sections(data, info["augment"])


def load_for_report(source: Path, data_name: str | None = None, data_root: str | None = None) -> LoadedEncoder:
    """Load a training checkpoint (``.ckpt``), a run directory (its ``checkpoints/last.ckpt``) or an
    export folder, with the run's data and augmentation config (``data_name``/``data_root`` replace
    ``data.name``/``data.root``). Bad input raises :class:`UserError`, one line."""
    try:
        if not source.exists():
            raise UserError(
                f"{str(source)!r}: no such file or directory; pass <run dir>/checkpoints/last.ckpt, a run directory "
                "or an export folder"
            )
        backbone, expander, info = load_encoder(source)
        loaded_with = "vicreg_lightning.export.load_encoder"
        data, augment = _checked_sections(info, source, data_name, data_root)
    except OSError as e:  # unreadable: permissions, a broken mount
        raise UserError(f"{str(source)!r}: cannot be read ({e.strerror or e})") from None
    backbone.eval()
    if expander is not None:
        expander.eval()
    return LoadedEncoder(backbone, expander, data, augment, dict(info), source, loaded_with)


def untrained_twin(info: dict[str, Any], seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A randomly initialised backbone and expander of the architecture ``info`` describes
    (``vicreg.json``), seeded, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone, expander = build_from_info(info)
    return backbone.module.eval(), expander.eval()


# ---------------------------------------------------------------------------------------------- features


def extract(
    backbone: nn.Module, expander: nn.Module | None, dataset: Dataset, device: torch.device,
    batch_size: int = 256, num_workers: int = 0,
) -> Features:
    """Features and embeddings of ``(image, label)`` samples, batch by batch on ``device`` (eval
    mode: BatchNorm on running statistics, so the batching changes nothing)."""
    backbone.to(device)
    if expander is not None:
        expander.to(device)
    return extract_features(backbone, expander, make_loader(dataset, batch_size, num_workers), device)


def capped(dataset: Dataset, max_samples: int, seed: int) -> Dataset:
    """At most ``max_samples`` of ``dataset``: a seeded random subset, in index order."""
    size = len(dataset)  # type: ignore[arg-type]
    if size <= max_samples:
        return dataset
    chosen = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:max_samples]
    return Subset(dataset, chosen.sort().values.tolist())


def default_out(encoder: LoadedEncoder) -> Path:
    """``<run dir>/report``; else ``report`` inside an export folder, or next to a checkpoint."""
    if encoder.run_dir is not None:
        return encoder.run_dir / "report"
    return encoder.source / "report" if encoder.source.is_dir() else encoder.source.parent / "report"


def architecture_known(info: dict[str, Any]) -> bool:
    """Whether ``info`` says enough to rebuild the architecture (:func:`untrained_twin`)."""
    return all(key in info for key in ("arch", "small_stem", "expander"))
