"""The report's options: their schema (no defaults; ``conf/report.yaml`` holds every value) and
their checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from vicreg_lightning.config import merge_into, require_value

REPORT_YAML = Path(__file__).resolve().parents[1] / "conf" / "report.yaml"
MAP_METHODS = ("auto", "tsne", "pca")


@dataclass
class ReportOptions:
    """What :func:`~vicreg_lightning.report.write.write_report` evaluates on, and how much of it."""

    domain_name: Optional[str] = MISSING
    domain_root: Optional[str] = MISSING
    device: str = MISSING
    batch_size: int = MISSING
    num_workers: Optional[int] = MISSING
    max_samples: int = MISSING
    invariance_samples: int = MISSING
    map_method: str = MISSING
    threshold_bound: float = MISSING
    groups_csv: Optional[str] = MISSING
    baseline: bool = MISSING
    seed: int = MISSING


def report_defaults() -> dict[str, Any]:
    """``conf/report.yaml``: every option's value when none is given."""
    return OmegaConf.to_container(OmegaConf.load(REPORT_YAML))


def report_options(**given: Any) -> DictConfig:
    """``conf/report.yaml`` with ``given`` over it, checked: a :class:`ConfigError` names the flag."""
    options = merge_into(ReportOptions, OmegaConf.merge(OmegaConf.load(REPORT_YAML), given))
    for name in ("batch_size", "max_samples", "invariance_samples"):
        require_value(options[name] >= 2, _flag(name), options[name], "an integer >= 2")
    require_value(options.num_workers is None or options.num_workers >= 0, "--num-workers", options.num_workers,
                  "an integer >= 0")
    require_value(options.threshold_bound > 1, "--threshold-bound", options.threshold_bound, "a factor > 1")
    require_value(options.map_method in MAP_METHODS, "--map", options.map_method, f"one of {', '.join(MAP_METHODS)}")
    return options


def _flag(name: str) -> str:
    return f"--{name.replace('_', '-')}"
