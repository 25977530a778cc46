"""Stopping a trial early, without labels: :class:`SearchPruning` (``callbacks.search_pruning`` of
``conf/hparams_search/vicreg_optuna.yaml``), and the metric names a search may refer to."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from omegaconf import DictConfig

from vicreg_lightning.errors import ConfigError
from vicreg_lightning.metrics.health import HEALTH_METRIC_NAMES
from vicreg_lightning.run_dir import PRUNED_FILE

# What VICRegModule logs (the module's log calls), and what train.run adds to metrics.json.
MODULE_METRICS = (
    "train/loss", "train/invariance", "train/variance", "train/covariance", "train/invariance_weighted",
    "train/variance_weighted", "train/covariance_weighted", "train/probe_loss", "train/probe_acc1",
    "train/embed_std_mean", "train/embed_std_min", "lr", "val/probe_loss", "val/probe_acc1", "val/probe_acc5",
    "epoch", "step",
)
# Callbacks' metrics, by the class name of callbacks.<name>._target_.
CALLBACK_METRICS = {
    "RepresentationHealth": tuple(f"health/{name}" for name in HEALTH_METRIC_NAMES),
    "KNNMonitor": ("val/knn_acc1",),
    "Throughput": ("train/samples_per_s", "train/epoch_time_s"),
}


def logged_metrics(cfg: DictConfig) -> set[str]:
    """The metric names a run of ``cfg`` logs (and a search may optimise or prune on)."""
    names = set(MODULE_METRICS)
    for spec in (cfg.get("callbacks") or {}).values():
        target = str((spec or {}).get("_target_", ""))
        names.update(CALLBACK_METRICS.get(target.rpartition(".")[2], ()))
        if target.endswith("ModelCheckpoint") and spec.get("monitor"):
            names.add(f"{spec.monitor}_best")
    return names


def check_metric(cfg: DictConfig, key: str, name: str) -> None:
    """Refuse a metric name (``optimized_metric``, the pruning metric) that the run never logs."""
    known = logged_metrics(cfg)
    if name not in known:
        close = sorted(n for n in known if n.split("/")[-1] in name or name.split("/")[-1] in n)
        hint = f"did you mean {', '.join(close)}?" if close else f"choose one of: {', '.join(sorted(known))}"
        raise ConfigError(f"{key}={name}: the run logs no such metric; {hint}")


class SearchPruning(pl.Callback):
    """Stop a trial whose representation has collapsed, and (in a stored study with a pruner)
    report the objective after every epoch and stop when the study's pruner says so.

    After epoch ``warmup_epochs`` + 1 and every epoch after it, a ``health_metric`` below
    ``health_min`` (``health/embed_rankme`` near 1, or ``health/embed_std_mean`` near 0: a
    collapsed embedding) stops the run at the end of that epoch. The run then ends as usual
    (checkpoint, ``metrics.json``) and writes ``pruned.json``: the epoch, the reason and the last
    values, from which the search records the trial as PRUNED (not failed).

    Args:
        dirpath: the run directory.
        objective: the metric reported to the study (``optimized_metric``).
        health_metric: the collapse signal; None turns the health rule off.
        health_min: prune below this.
        warmup_epochs: epochs never pruned (the embeddings' statistics settle first).
    """

    def __init__(self, dirpath: str, objective: str, health_metric: str | None, health_min: float,
                 warmup_epochs: int) -> None:
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, int) or warmup_epochs < 0:
            raise ConfigError(f"callbacks.search_pruning.warmup_epochs={warmup_epochs!r}: must be an int >= 0")
        self.dirpath, self.objective = Path(dirpath), objective
        self.health_metric, self.health_min, self.warmup_epochs = health_metric, float(health_min), warmup_epochs
        self.trial: Any = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            self.trial = _this_trial(self.warmup_epochs)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Validation has run by now: the epoch's health and probe values are in callback_metrics.
        values = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
        epoch = trainer.current_epoch + 1
        reason = None
        if self.trial is not None and self.objective in values:
            self.trial.report(values[self.objective], epoch)
            if self.trial.should_prune():
                reason = f"the study's pruner: {self.objective}={values[self.objective]:.4g} after epoch {epoch}"
        # Missing (no health check this epoch): no verdict. NaN (non-finite embeddings): collapsed too.
        health = values.get(self.health_metric) if self.health_metric else None
        if health is not None and epoch > self.warmup_epochs and not health >= self.health_min:
            reason = f"{self.health_metric}={health:.4g} < {self.health_min:g} after epoch {epoch}"
        # Under DDP only rank 0 asks the study: every rank stops with it (Lightning does not
        # reduce should_stop itself; EarlyStopping does the same).
        if not trainer.strategy.reduce_boolean_decision(reason is not None, all=False):
            return
        trainer.should_stop = True
        if trainer.is_global_zero:
            self.dirpath.mkdir(parents=True, exist_ok=True)
            record = {"status": "pruned", "epoch": epoch, "reason": reason or "pruned on another rank",
                      "values": values}
            (self.dirpath / PRUNED_FILE).write_text(json.dumps(record, indent=2) + "\n")
            print(f"pruned: {reason}")


def _this_trial(warmup_epochs: int) -> Any:
    """The study's handle on the trial this job runs, where the search stores its study and has
    a pruner on the objective; None otherwise."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    hydra_cfg = HydraConfig.get()
    sweeper = hydra_cfg.sweeper
    if str(sweeper.get("pruner", "none")) == "none" or hydra_cfg.job.get("num") is None:
        return None
    import optuna

    from vicreg_lightning.hparams_search.study import make_pruner, storage_url

    storage = optuna.storages.RDBStorage(storage_url(sweeper.storage, Path(hydra_cfg.sweep.dir)))
    study = optuna.load_study(study_name=sweeper.study_name, storage=storage,
                              pruner=make_pruner(sweeper.pruner, warmup_epochs))
    # The job number is the trial number (the sweeper launches each trial as job <number>).
    study_id = storage.get_study_id_from_name(sweeper.study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, int(hydra_cfg.job.num))
    return optuna.Trial(study, trial_id)
