"""The run's loggers (``conf/logger``), and what Weights & Biases needs beyond Lightning's logger.

W&B rules here: offline when there are no credentials (``WANDB_MODE`` wins when set); the whole
composed config as the run's config; the jobs of one ``-m`` sweep in one group named after the
sweep, tagged with their overrides; a resumed run (same run directory) continues the same W&B run;
and W&B can never stop training: if it cannot start, one warning, and the run goes on with its
other loggers.
"""

from __future__ import annotations

import netrc
import os
import secrets
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import Logger, WandbLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from vicreg_lightning.config import instantiate_entry

WANDB_TARGET = "lightning.pytorch.loggers.WandbLogger"
# Beside the run's other outputs: a resumed run reads it to continue the same W&B run.
WANDB_ID_FILE = "wandb_run_id.txt"


def _wandb_has_credentials() -> bool:
    """An API key in the environment or in ~/.netrc for the W&B host (what ``wandb login`` writes)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc().authenticators(host or "") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _sweep_identity() -> tuple[str | None, list[str]]:
    """Under ``-m``: the sweep's name (its directory) and this job's overrides; else ``(None, [])``."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hydra_cfg = HydraConfig.get()
    except ValueError:  # no Hydra around this run (called from Python)
        return None, []
    if hydra_cfg.mode != RunMode.MULTIRUN:
        return None, []
    return Path(hydra_cfg.sweep.dir).name, list(hydra_cfg.overrides.task)


def _wandb_arguments(spec: dict[str, Any], output_dir: Path) -> dict[str, Any]:
    spec = dict(spec)
    if not os.environ.get("WANDB_MODE") and spec.get("mode") is None:
        spec["mode"] = "online" if _wandb_has_credentials() else "offline"
    sweep, overrides = _sweep_identity()
    if sweep is not None:
        spec["group"] = spec.get("group") or sweep
        spec["tags"] = [*(spec.get("tags") or []), *overrides]
    id_file = output_dir / WANDB_ID_FILE
    if spec.get("id") is None:
        spec["id"] = id_file.read_text().strip() if id_file.exists() else secrets.token_hex(4)
    spec["name"] = spec.get("name") or (f"{sweep}/{output_dir.name}" if sweep else output_dir.name)
    init_timeout = spec.pop("init_timeout", None)
    if init_timeout is not None:
        import wandb

        spec["settings"] = wandb.Settings(init_timeout=init_timeout)
    return spec


def build_loggers(section: DictConfig | None, cfg: DictConfig) -> list[Logger]:
    """Instantiate every ``logger.<name>`` entry. A W&B logger starts its run here (on rank 0),
    so that a failure to start is a warning now rather than an exception inside training."""
    is_global_zero = rank_zero_only.rank == 0
    output_dir = Path(cfg.paths.output_dir)
    loggers: list[Logger] = []
    for name, spec in (section or {}).items():
        if spec is None:
            continue
        spec = OmegaConf.to_container(spec, resolve=True)
        is_wandb = spec.get("_target_") == WANDB_TARGET
        if is_wandb:
            spec = _wandb_arguments(spec, output_dir)
        logger = instantiate_entry(spec, f"logger.{name}")
        if is_wandb and is_global_zero and not _start_wandb(logger, cfg, output_dir):
            continue
        loggers.append(logger)
    return loggers


def _start_wandb(logger: WandbLogger, cfg: DictConfig, output_dir: Path) -> bool:
    try:
        run = logger.experiment
        run.config.update(OmegaConf.to_container(cfg, resolve=True), allow_val_change=True)
    except Exception as e:  # noqa: BLE001 - W&B must never stop training
        warnings.warn(f"W&B could not start ({type(e).__name__}: {e}); training goes on without it", stacklevel=2)
        return False
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / WANDB_ID_FILE).write_text(run.id + "\n")
    return True


def finish_loggers(loggers: list[Logger], failed: bool = False) -> None:
    """Close the W&B run (so the next job of a sweep gets its own) and say how to upload an
    offline one."""
    for logger in loggers:
        if not isinstance(logger, WandbLogger) or logger._experiment is None:
            continue
        run = logger.experiment
        offline = run.settings.mode == "offline"
        run_dir = Path(run.dir).parent
        try:
            run.finish(exit_code=1 if failed else 0)
        except Exception as e:  # noqa: BLE001 - W&B must never stop the run from ending cleanly
            warnings.warn(f"W&B could not finish ({type(e).__name__}: {e})", stacklevel=2)
        if offline:
            print(f"W&B offline run; upload it with: wandb sync {run_dir}")
