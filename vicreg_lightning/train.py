"""One pretraining run: ``run(cfg) -> metrics``; the ``train.py`` entry point only calls this."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vicreg_lightning.config import check_config, check_trainer_arguments
from vicreg_lightning.data.catalog import inspect_data
from vicreg_lightning.data.datamodule import VICRegDataModule
from vicreg_lightning.errors import ConfigError
from vicreg_lightning.module import VICRegModule

METRICS_FILE = "metrics.json"


def _instantiate_all(section: DictConfig | None, key: str) -> list[Any]:
    """Instantiate every ``_target_`` entry of a ``callbacks``/``logger`` section."""
    objects = []
    for name, spec in (section or {}).items():
        if spec is None:
            continue
        try:
            objects.append(instantiate(spec))
        except Exception as e:  # noqa: BLE001 - any constructor error is a config error here
            raise ConfigError(f"{key}.{name}: cannot instantiate {spec.get('_target_')}: {e}") from None
    return objects


def _refuse_to_overwrite(output_dir: Path, ckpt_path: str | None) -> None:
    if ckpt_path is None and (output_dir / METRICS_FILE).exists():
        raise ConfigError(
            f"paths.output_dir={str(output_dir)!r} already holds a finished run; "
            "choose a new hydra.run.dir, or pass ckpt_path to resume"
        )


def _check_checkpoint(ckpt_path: str | None) -> None:
    if ckpt_path is None:
        return
    path = Path(ckpt_path)
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path!r}: no such file; pass a checkpoint from <run dir>/checkpoints/")
    # torch.save writes a zip archive: anything else is truncated or not a checkpoint at all.
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"ckpt_path={ckpt_path!r}: not a readable PyTorch checkpoint (corrupt or truncated)")


def write_metrics(path: Path, metrics: dict[str, float]) -> None:
    """Write ``metrics.json`` atomically: a reader never sees a half-written file."""
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def run(cfg: DictConfig) -> dict[str, float]:
    """Pretrain, write ``metrics.json`` in ``paths.output_dir``; return the final metrics (flat
    ``{"val/probe_acc1": ..., "train/loss": ...}``). ``cfg`` may be checked already."""
    cfg = check_config(cfg)
    check_trainer_arguments(cfg.trainer)
    output_dir = Path(cfg.paths.output_dir)
    _refuse_to_overwrite(output_dir, cfg.ckpt_path)
    _check_checkpoint(cfg.ckpt_path)
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, workers=True, verbose=False)

    datamodule = VICRegDataModule(cfg.data, cfg.augment)
    module = VICRegModule(
        model=OmegaConf.to_container(cfg.model),
        loss=OmegaConf.to_container(cfg.loss),
        optim=OmegaConf.to_container(cfg.optim),
        num_classes=inspect_data(cfg.data),
        batch_size=cfg.data.batch_size,
    )
    callbacks = _instantiate_all(cfg.callbacks, "callbacks")
    loggers = _instantiate_all(cfg.logger, "logger")
    trainer = pl.Trainer(
        **OmegaConf.to_container(cfg.trainer),
        callbacks=callbacks,
        logger=loggers or False,
        default_root_dir=str(output_dir),
    )
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path)

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"{checkpoint.monitor}_best"] = float(checkpoint.best_model_score)
    metrics["epoch"] = float(trainer.current_epoch)
    metrics["step"] = float(trainer.global_step)
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_metrics(output_dir / METRICS_FILE, metrics)
        summary = ", ".join(f"{k}={metrics[k]:.4f}" for k in ("val/probe_acc1", "val/probe_acc5", "train/loss")
                            if k in metrics)
        print(f"Final metrics ({output_dir / METRICS_FILE}): {summary}")
    return metrics
