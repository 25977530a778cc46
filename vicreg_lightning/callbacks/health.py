"""RepresentationHealth: the label-free collapse watch of ``conf/callbacks`` (RankMe, per-dimension
std, mean ``|correlation|`` of :mod:`vicreg_lightning.metrics.health` on fixed validation images)."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn

from vicreg_lightning.features import extract_features
from vicreg_lightning.metrics.health import health_metrics

OnCollapse = Literal["warn", "stop"]
ON_COLLAPSE: tuple[str, ...] = ("warn", "stop")


class RepresentationCollapseWarning(UserWarning):
    """The embeddings' RankMe or std fell below the threshold given to :class:`RepresentationHealth`."""


def _images_of(batch: Any) -> Tensor:
    # Validation batches are (images, labels); a bare tensor of images is accepted too.
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(images, Tensor):
        raise TypeError(f"expected validation batches (images, labels); got {type(batch).__name__}")
    return images


class RepresentationHealth(pl.Callback):
    """Log :func:`health_metrics` as ``health/<name>`` on a fixed set of validation images, and
    raise an alarm when the embeddings collapse.

    The images are the first ``num_samples`` of ``trainer.datamodule.val_dataloader()`` (the
    validation set is not shuffled, so they are the same images at every check and on every rank),
    read once. Without a datamodule they are the first validation batches the trainer runs, and
    the checks start after the first validation. The backbone and expander see them in eval mode
    (BatchNorm on running statistics, so the numbers do not depend on how the images are batched)
    under ``torch.no_grad()``, in the trainer's precision; the modules' modes are restored after.

    The metrics are computed every ``every_n_steps`` optimizer steps and at the end of every
    validation epoch (not during the sanity check), so ``trainer.callback_metrics`` — and the
    ``metrics.json`` of a run — always hold the latest values. The loggers get each check once,
    at ``step=trainer.global_step``. Every check that finds a collapse warns again.

    Eval mode reads BatchNorm's running statistics, which lag the weights for the first few dozen
    steps (momentum 0.1): the very first checks can show a much smaller embedding std than
    ``train/embed_std_mean`` does. Keep alarms for after that (the default 200 steps is).

    Args:
        every_n_steps: optimizer steps between checks during training; 0 checks only at the end of
            validation epochs.
        num_samples: validation images to use (fewer if the validation set is smaller). RankMe is at
            most ``min(num_samples, dim)``, so set ``rankme_min`` against that.
        std_threshold: a dimension counts in ``*_std_frac_below`` when its std is below this. 0.1 is
            a tenth of the std of 1 that VICReg's variance hinge asks of every embedding dimension:
            an order of magnitude under target is a dimension that has effectively died, while
            healthy training hovers near 1. (Backbone features are not scaled by the loss, so
            ``feat_std_frac_below`` is a trend to watch, not an absolute verdict.)
        rankme_min: alarm when ``embed_rankme`` falls below this; None turns the check off.
        std_min: alarm when ``embed_std_mean`` falls below this; None turns the check off. The mean
            rather than the min: one dead dimension among thousands is not a collapse (it shows in
            ``embed_std_frac_below``), a falling mean is; partial, dimensional collapse is what
            ``rankme_min`` catches.
        on_collapse: ``"warn"`` emits a :class:`RepresentationCollapseWarning`; ``"stop"`` warns
            and sets ``trainer.should_stop``.
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        num_samples: int = 512,
        std_threshold: float = 0.1,
        rankme_min: float | None = None,
        std_min: float | None = None,
        on_collapse: OnCollapse = "warn",
    ) -> None:
        super().__init__()
        if isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 0:
            raise ValueError(f"every_n_steps={every_n_steps!r}: must be an int >= 0 (0: only after validation)")
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 2:
            raise ValueError(f"num_samples={num_samples!r}: must be an int >= 2 (a std needs two samples)")
        if not (isinstance(std_threshold, (int, float)) and math.isfinite(std_threshold) and std_threshold > 0):
            raise ValueError(f"std_threshold={std_threshold!r}: must be a finite number > 0")
        for name, value in (("rankme_min", rankme_min), ("std_min", std_min)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value!r}: must be a finite number > 0, or None to turn the check off")
        if on_collapse not in ON_COLLAPSE:
            raise ValueError(f"on_collapse={on_collapse!r}: choose one of {', '.join(ON_COLLAPSE)}")
        self.every_n_steps = every_n_steps
        self.num_samples = num_samples
        self.std_threshold = float(std_threshold)
        self.rankme_min = rankme_min
        self.std_min = std_min
        self.on_collapse = on_collapse
        self._batches: list[Tensor] | None = None
        self._captured: list[Tensor] = []
        self._last: tuple[int, dict[str, Tensor]] | None = None

    # ------------------------------------------------------------------ the fixed images

    def _fixed_batches(self, trainer: pl.Trainer) -> list[Tensor] | None:
        if self._batches is not None:
            return self._batches
        datamodule = trainer.datamodule
        if datamodule is not None and is_overridden("val_dataloader", datamodule):
            loader = datamodule.val_dataloader()
            if isinstance(loader, (list, tuple)):
                loader = loader[0]
            self._batches = self._take(_images_of(batch) for batch in loader)
        elif self._captured:
            self._batches, self._captured = self._take(self._captured), []
        return self._batches

    def _take(self, batches: Iterable[Tensor]) -> list[Tensor]:
        taken: list[Tensor] = []
        count = 0
        for images in batches:
            images = images[: self.num_samples - count].detach().cpu()
            taken.append(images)
            count += len(images)
            if count >= self.num_samples:
                break
        if count < 2:
            raise ValueError(f"RepresentationHealth needs at least 2 validation images; the validation set has {count}")
        return taken

    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        # Only without a datamodule's val_dataloader: keep the first validation images the trainer shows us.
        datamodule = trainer.datamodule
        if datamodule is not None and is_overridden("val_dataloader", datamodule):
            return
        if self._batches is not None or dataloader_idx != 0:
            return
        if sum(len(images) for images in self._captured) < self.num_samples:
            self._captured.append(_images_of(batch).detach().cpu())

    # ------------------------------------------------------------------ measuring

    @torch.no_grad()
    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Tensor] | None:
        """The health metrics of the fixed images now, or None while there are no images yet."""
        batches = self._fixed_batches(trainer)
        if batches is None:
            return None
        # Batch by batch, as the loader gave them: eval-mode BatchNorm makes that exact, and the
        # activation memory stays that of one validation step.
        unlabelled = ((images, torch.zeros(len(images), dtype=torch.long)) for images in batches)
        encoded = extract_features(pl_module.backbone, pl_module.expander, unlabelled, pl_module.device,
                                   precision=trainer.precision_plugin, on_device=True)
        assert encoded.embeddings is not None
        return health_metrics(encoded.embeddings, encoded.features, self.std_threshold)

    def _check(self, trainer: pl.Trainer, pl_module: pl.LightningModule, in_validation: bool) -> None:
        step = trainer.global_step
        if self._last is not None and self._last[0] == step:
            # Weights unchanged since the last check (validation right after a step check): log the
            # same values again so that they are in this loop's results too, but raise no second alarm.
            metrics, fresh = self._last[1], False
        else:
            measured = self.measure(trainer, pl_module)
            if measured is None:
                return
            metrics, fresh = measured, True
            self._last = (step, metrics)

        # Every rank measures the same images with the same (DDP-synchronised) weights, so every
        # rank logs the same values: no sync_dist (no collective, nothing to average) and no
        # rank_zero_only (which would hide the keys from callbacks that monitor them on other
        # ranks). logger=False: the loggers get the values below, once, at this exact step,
        # whatever trainer.log_every_n_steps is.
        for name, value in metrics.items():
            pl_module.log(
                f"health/{name}", value, on_step=not in_validation, on_epoch=in_validation,
                logger=False, sync_dist=False, batch_size=1,
            )
        if not fresh:
            return
        if trainer.is_global_zero:
            # With the epoch, as Lightning adds it to every row it logs itself.
            row = {f"health/{name}": float(v) for name, v in metrics.items()} | {"epoch": trainer.current_epoch}
            for logger in trainer.loggers:
                logger.log_metrics(row, step=step)
        self._alarm(trainer, metrics, step)

    def _alarm(self, trainer: pl.Trainer, metrics: dict[str, Tensor], step: int) -> None:
        failures = []
        for name, threshold in (("embed_rankme", self.rankme_min), ("embed_std_mean", self.std_min)):
            if threshold is None:
                continue
            value = float(metrics[name])
            # A NaN (non-finite embeddings) is no healthier than a small value.
            if not value >= threshold:
                failures.append(f"health/{name}={value:.4g} < {threshold:g}")
        collapsed = bool(failures)
        if self.on_collapse == "stop":
            # Collective on every rank at every check (all ranks reach the same checks): any rank's
            # collapse stops all of them together.
            collapsed = trainer.strategy.reduce_boolean_decision(collapsed, all=False)
            if collapsed:
                trainer.should_stop = True
        if not failures:
            return
        action = "stopping training (on_collapse='stop')" if self.on_collapse == "stop" else (
            "training continues (on_collapse='warn')"
        )
        rank_zero_warn(
            f"representation collapse at step {step}: {'; '.join(failures)}; {action}",
            category=RepresentationCollapseWarning,
        )

    # ------------------------------------------------------------------ hooks

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        missing = [name for name in ("backbone", "expander")
                   if not isinstance(getattr(pl_module, name, None), nn.Module)]
        if missing:
            raise TypeError(
                f"RepresentationHealth needs a module with .backbone (images -> features) and .expander "
                f"(features -> embeddings); {type(pl_module).__name__} lacks {', '.join(missing)}"
            )

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # global_step counts optimizer steps: with gradient accumulation several batches end at the
        # same step, and _check measures only the first of them.
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self._check(trainer, pl_module, in_validation=False)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The sanity check runs untrained weights through a few batches: nothing to judge yet.
        if trainer.sanity_checking:
            return
        self._check(trainer, pl_module, in_validation=True)
