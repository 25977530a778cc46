"""One pretraining run: ``run(cfg) -> metrics``; the ``train.py`` entry point only calls this."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from vicreg_lightning.callbacks.preemption import PREEMPTED_EXIT_CODE, CheckpointOnPreemption, owe_stop
from vicreg_lightning import slurm
from vicreg_lightning.checkpoint_io import AtomicCheckpointIO
from vicreg_lightning.backbones import uses_small_stem
from vicreg_lightning.choices import backbone_kind
from vicreg_lightning.config import check_config, check_trainer_arguments, instantiate_entry
from vicreg_lightning.data.catalog import inspect_data
from vicreg_lightning.data.datamodule import VICRegDataModule, per_device_batch_size
from vicreg_lightning.micro_batch import check_micro_batch_size
from vicreg_lightning.distributed import SyncBatchNormAnyDevice, one_job_of_many
from vicreg_lightning.loggers import build_loggers, finish_loggers
from vicreg_lightning.module import VICRegModule
from vicreg_lightning.patches import use_job_command_for_ddp_children
from vicreg_lightning.resume import check_checkpoint, resolve_checkpoint
from vicreg_lightning.run_dir import (FAILURE_FILE, METRICS_FILE, claim, held, read_metrics, save_job_config,
                                      saved_checkpoints, write_metrics)


def _instantiate_callbacks(section: DictConfig | None) -> list[pl.Callback]:
    """Instantiate every ``callbacks.<name>`` entry."""
    callbacks = []
    for name, spec in (section or {}).items():
        if spec is not None:
            callbacks.append(instantiate_entry(spec, f"callbacks.{name}"))
    return callbacks


def resolve_precision(precision: str | int, accelerator: str | None) -> str | int:
    """``trainer.precision=auto``: bf16 autocast where the run will use a GPU that supports it
    (the loss keeps var/cov in float32), else full float32."""
    if precision != "auto":
        return precision
    on_cuda = accelerator in ("auto", "gpu", "cuda", None) and torch.cuda.is_available()
    return "bf16-mixed" if on_cuda and torch.cuda.is_bf16_supported() else "32-true"


def build_trainer(cfg: DictConfig, loggers: list[Logger]) -> pl.Trainer:
    """The run's ``Trainer``: ``cfg.trainer``'s arguments, the callbacks of ``cfg.callbacks``, and
    the plugins every run has (atomic checkpoint files; SyncBatchNorm on any device; under SLURM,
    its environment without Lightning's auto-requeue)."""
    trainer_args = OmegaConf.to_container(cfg.trainer)
    trainer_args["precision"] = resolve_precision(trainer_args.get("precision", "auto"), trainer_args.get("accelerator"))
    trainer_args["plugins"] = [*trainer_args.get("plugins", []), AtomicCheckpointIO(), *slurm.cluster_environment()]
    if trainer_args.get("sync_batchnorm"):
        trainer_args["plugins"].append(SyncBatchNormAnyDevice())
    return pl.Trainer(**trainer_args, callbacks=_instantiate_callbacks(cfg.callbacks), logger=loggers or False,
                      default_root_dir=cfg.paths.output_dir)


def run(cfg: DictConfig) -> dict[str, float]:
    """Pretrain, write ``metrics.json`` in ``paths.output_dir``; return the final metrics (flat
    ``{"val/probe_acc1": ..., "train/loss": ...}``). ``cfg`` may be checked already.

    The run holds its directory while it runs, and a finished run is never written into:
    ``ckpt_path=last`` on it (a requeued job that had already ended) returns its recorded metrics,
    anything else is refused."""
    composed = cfg
    cfg = check_config(cfg)
    check_trainer_arguments(cfg.trainer)
    slurm.check_allocation(cfg.trainer)
    output_dir = Path(cfg.paths.output_dir)
    with held(output_dir):
        requested = slurm.resume_checkpoint(cfg.ckpt_path, bool(saved_checkpoints(output_dir)))
        if not claim(output_dir, requested, cfg.task_name):
            print(f"{output_dir} holds a finished run ({METRICS_FILE}); nothing to do")
            return read_metrics(output_dir)
        return _train(cfg, composed, output_dir, requested)


def _train(cfg: DictConfig, composed: DictConfig, output_dir: Path, requested: str | None) -> dict[str, float]:
    """:func:`run` once the run directory is held and claimed; ``requested``: the ``ckpt_path``."""
    if cfg.seed is not None:
        pl.seed_everything(cfg.seed, verbose=False)

    datamodule = VICRegDataModule(cfg.data, cfg.augment, seed=cfg.seed or 0)
    model = OmegaConf.to_container(cfg.model)
    if backbone_kind(model["backbone"]) == "resnet":  # recorded as chosen, for the export
        model["small_stem"] = uses_small_stem(model["small_stem"], cfg.augment.size)
    module = VICRegModule(
        model=model,
        loss=OmegaConf.to_container(cfg.loss),
        optim=OmegaConf.to_container(cfg.optim),
        num_classes=inspect_data(cfg.data),
        batch_size=cfg.data.batch_size,
        image_size=cfg.augment.size,
        local_crop_size=cfg.augment.local_size if cfg.augment.num_local_crops else None,
        micro_batch_size=cfg.data.micro_batch_size,
    )
    ckpt_path = resolve_checkpoint(requested, output_dir)
    if ckpt_path is not None:
        check_checkpoint(ckpt_path, module, requested, cfg.trainer.max_epochs, cfg.trainer.max_steps)
    elif requested is not None:
        print(f"ckpt_path=last: no checkpoint in {output_dir} yet, starting from scratch", file=sys.stderr)
    loggers = build_loggers(cfg.logger, cfg)
    use_job_command_for_ddp_children()
    with one_job_of_many():
        trainer = build_trainer(cfg, loggers)
        try:
            per_device = per_device_batch_size(cfg.data.batch_size, trainer.world_size)  # before DDP starts its processes
            check_micro_batch_size(cfg.data.micro_batch_size, per_device)
            save_job_config(composed)  # once every check has passed; a resumed run keeps its own
            metrics, finished = _fit(trainer, module, datamodule, ckpt_path, output_dir)
        except BaseException:
            finish_loggers(loggers, failed=True)
            raise
    finish_loggers(loggers)
    if not finished:  # by trainer.max_time: resumable, so not recorded as finished
        if trainer.is_global_zero:
            print(f"stopped by trainer.max_time at epoch {trainer.current_epoch} of {trainer.max_epochs} (step "
                  f"{trainer.global_step}), not finished; continue with: hydra.run.dir={output_dir} ckpt_path=last",
                  file=sys.stderr)
        return metrics
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        write_metrics(output_dir / METRICS_FILE, metrics)
        (output_dir / FAILURE_FILE).unlink(missing_ok=True)  # of an earlier attempt
        summary = ", ".join(f"{k}={metrics[k]:.4f}" for k in ("val/probe_acc1", "val/probe_acc5", "train/loss")
                            if k in metrics)
        print(f"Final metrics ({output_dir / METRICS_FILE}): {summary}")
    return metrics


def _fit(
    trainer: pl.Trainer, module: VICRegModule, datamodule: VICRegDataModule, ckpt_path: Path | None, output_dir: Path
) -> tuple[dict[str, float], bool]:
    """Train; the final metrics, as every rank sees them (synchronised by Lightning), and whether the
    run finished (False: ``trainer.max_time`` stopped it first; ``last.ckpt`` continues it)."""
    preemption = [callback for callback in trainer.callbacks if isinstance(callback, CheckpointOnPreemption)]
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        # A signal held during the last validation stops the run once every epoch is done: finished.
        if trainer.current_epoch < trainer.max_epochs:
            for callback in preemption:
                callback.hand_over()
            # Exit non-zero: a scheduler, or a sweep, must not take a preempted run for a finished one.
            if trainer.is_global_zero:
                print(f"stopped (SIGTERM or Ctrl-C) at step {trainer.global_step}; resume with: "
                      f"hydra.run.dir={output_dir} ckpt_path=last", file=sys.stderr)
            raise SystemExit(PREEMPTED_EXIT_CODE) from None
        owe_stop()
    finally:
        # Lightning runs no callback teardown after an exception, and puts its own handlers back.
        for callback in preemption:
            callback.restore_signal_handlers()

    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and checkpoint.best_model_score is not None:
        metrics[f"{checkpoint.monitor}_best"] = float(checkpoint.best_model_score)
    metrics["epoch"] = float(trainer.current_epoch)
    metrics["step"] = float(trainer.global_step)
    return metrics, not any(callback.stopped_by_time for callback in preemption)
