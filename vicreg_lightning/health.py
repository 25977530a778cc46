"""Representation-health metrics, and a callback that watches them for collapse during training.

Self-supervised losses say little about whether the representation is still useful: a VICReg run
whose embeddings have collapsed to a few directions can show a smooth loss curve. The numbers here
are computed on a fixed set of validation images, label-free:

- RankMe (Garrido, Balestriero, Najman, LeCun, "RankMe: Assessing the downstream performance of
  pretrained self-supervised representations by their rank", ICML 2023, arXiv:2210.02885), the
  effective rank of the representation, which tracks linear-probe accuracy across hyperparameters;
- the per-dimension standard deviation, the quantity VICReg's variance hinge pushes up to 1
  (Bardes, Ponce, LeCun, ICLR 2022): complete collapse drives every std to 0;
- the mean absolute off-diagonal correlation, the redundancy VICReg's covariance term pushes down.

All of them are reported for the embeddings (expander output, what the loss sees) and for the
features (backbone output, what is shipped and probed).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn

OnCollapse = Literal["warn", "stop"]
ON_COLLAPSE: tuple[str, ...] = ("warn", "stop")

SPACES: tuple[str, ...] = ("embed", "feat")
METRICS: tuple[str, ...] = ("rankme", "std_min", "std_mean", "std_frac_below", "mean_abs_corr")
# Every key of health_metrics(), in a stable order: "<space>_<metric>", logged as "health/<key>".
HEALTH_METRIC_NAMES: tuple[str, ...] = tuple(f"{space}_{metric}" for space in SPACES for metric in METRICS)

# A dimension whose std is below this fraction of its RMS value is constant up to rounding: float32
# inputs carry ~1e-7 relative precision, so a smaller spread is noise, and its "correlations" too.
CONSTANT_RTOL = 1e-6


class RepresentationCollapseWarning(UserWarning):
    """The embeddings' RankMe or std fell below the threshold given to :class:`RepresentationHealth`."""


def _as_matrix(x: Tensor, name: str = "x") -> Tensor:
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, dims); got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{name} has {x.shape[0]} sample(s): a spread over the batch needs at least 2")
    return x.detach()


def _float64(x: Tensor) -> Tensor:
    # MPS has no float64: those few statistics go through the CPU there.
    return (x.cpu() if x.device.type == "mps" else x).double()


@torch.no_grad()
def rankme(x: Tensor, eps: float = 1e-7) -> Tensor:
    """RankMe of an ``(N, D)`` representation (Garrido et al., ICML 2023)::

        p_k = σ_k(x) / ‖σ(x)‖₁ + eps,    RankMe(x) = exp(−Σ_k p_k log p_k),   k = 1 … min(N, D)

    The singular values are those of ``x`` as given, *not* centred: the paper defines RankMe on
    the embedding matrix itself, with the same ``eps`` (1e-7, for float32). A shared offset is
    therefore one more direction (a collapsed, constant, non-zero embedding scores ≈1, not 0).

    ``x`` of rank ``k`` with equal non-zero singular values gives ≈ ``k``; unequal ones give less.
    The value is at most ``m = min(N, D)`` up to ``eps``: the ``eps`` on every term lifts the sum
    of ``p`` to ``1 + m·eps``, and a flat spectrum then scores ``m·(1 + m·eps·(log m − 1))``, i.e.
    3e-4 too high at m = 512, 1.4e-3 at 2048 (kept: it is the paper's formula). It saturates at the
    number of samples, so compare runs at equal ``N``.

    σ² are the eigenvalues of the smaller Gram matrix (``x xᵀ`` or ``xᵀ x``), in float64: 20×
    faster than an SVD of a 512×8192 matrix on CPU, and float64 resolves singular values down to
    ~1e-8·σ_max, below which ``p_k`` is already swamped by ``eps``. An all-zero ``x`` gives ≈1
    (every ``p_k = eps``), a non-finite one NaN.
    """
    x = _as_matrix(x)
    if not torch.isfinite(x).all():
        return torch.tensor(float("nan"), device=x.device)
    x64 = _float64(x)
    gram = x64 @ x64.T if x64.shape[0] <= x64.shape[1] else x64.T @ x64
    # Rounding can leave the zero eigenvalues of a rank-deficient Gram matrix slightly negative.
    singular_values = torch.linalg.eigvalsh(gram).clamp_min(0).sqrt()
    # An all-zero matrix has ‖σ‖₁ = 0: treat it as fully collapsed instead of dividing 0 by 0.
    p = singular_values / singular_values.sum().clamp_min(torch.finfo(torch.float64).tiny) + eps
    return torch.exp(-(p * p.log()).sum()).float().to(x.device)


@torch.no_grad()
def std_stats(x: Tensor, threshold: float) -> dict[str, Tensor]:
    """Per-dimension standard deviation over the batch of an ``(N, D)`` matrix, summarised.

    The std is unbiased (``N − 1``), as in VICReg's variance term, and computed in float64 so that
    dimensions with a large offset keep their spread. Returns float32 scalars ``"min"``, ``"mean"``
    and ``"frac_below"``: the fraction of dimensions whose std is below ``threshold``.
    """
    x = _as_matrix(x)
    std = _float64(x).std(dim=0, correction=1)
    return {
        "min": std.min().float().to(x.device),
        "mean": std.mean().float().to(x.device),
        "frac_below": (std < threshold).double().mean().float().to(x.device),
    }


@torch.no_grad()
def mean_abs_offdiag_corr(x: Tensor, block_size: int = 1024) -> Tensor:
    """Mean of ``|C_ij|`` over ``i ≠ j``, ``C`` the ``D×D`` Pearson correlation matrix of ``(N, D)``.

    Constant dimensions (std at most :data:`CONSTANT_RTOL` × their RMS value, e.g. dead units) have
    no correlation — numpy's ``corrcoef`` gives NaN there — and are left out: the mean runs over the
    pairs of non-constant dimensions, so the number measures redundancy among the dimensions that
    are alive (how many are dead is what :func:`std_stats` reports). With fewer than two
    non-constant dimensions there is no pair, and the result is 0.

    Centring and scaling are done in float64; the ``D×D`` products in float32 (correlations lie in
    [−1, 1], so float32 is accurate to ~1e-6 there), ``block_size`` rows at a time so that an
    8192-d embedding never materialises its 256 MiB correlation matrix at once.
    """
    x = _as_matrix(x)
    n = x.shape[0]
    x64 = _float64(x)
    centred = x64 - x64.mean(dim=0)
    std = centred.square().sum(dim=0).div(n - 1).sqrt()
    alive = std > CONSTANT_RTOL * x64.square().mean(dim=0).sqrt()
    k = int(alive.sum())
    if k < 2:
        return torch.zeros((), device=x.device)
    z = (centred[:, alive] / std[alive]).float()
    total = torch.zeros((), dtype=torch.float64, device=z.device)
    for start in range(0, k, block_size):
        block = z[:, start : start + block_size].T @ z / (n - 1)
        # The diagonal is 1 up to rounding: subtract the computed one rather than k.
        total += block.abs().sum(dtype=torch.float64) - block.diagonal(offset=start).abs().sum(dtype=torch.float64)
    return (total / (k * (k - 1))).float().to(x.device)


@torch.no_grad()
def health_metrics(embeddings: Tensor, features: Tensor, std_threshold: float = 0.1) -> dict[str, Tensor]:
    """Every health number of a batch, keyed ``"<space>_<metric>"`` (:data:`HEALTH_METRIC_NAMES`).

    ``space`` is ``embed`` (the expander's output) or ``feat`` (the backbone's); ``metric`` is
    ``rankme``, ``std_min``, ``std_mean``, ``std_frac_below`` (std below ``std_threshold``) and
    ``mean_abs_corr``. Values are float32 scalars.
    """
    if embeddings.shape[0] != features.shape[0]:
        raise ValueError(
            f"embeddings and features must come from the same samples; got {embeddings.shape[0]} "
            f"and {features.shape[0]} rows"
        )
    metrics: dict[str, Tensor] = {}
    for space, x in (("embed", embeddings), ("feat", features)):
        _as_matrix(x, name=space)
        metrics[f"{space}_rankme"] = rankme(x)
        for stat, value in std_stats(x, std_threshold).items():
            metrics[f"{space}_std_{stat}"] = value
        metrics[f"{space}_mean_abs_corr"] = mean_abs_offdiag_corr(x)
    return {name: metrics[name] for name in HEALTH_METRIC_NAMES}


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
        modules = (pl_module.backbone, pl_module.expander)
        modes = {m: m.training for module in modules for m in module.modules()}
        precision = trainer.precision_plugin
        features, embeddings = [], []
        try:
            for module in modules:
                module.eval()
            # Batch by batch, as the loader gave them: eval-mode BatchNorm makes that exact, and
            # the activation memory stays that of one validation step.
            for images in batches:
                images = precision.convert_input(images.to(pl_module.device))
                with precision.forward_context():
                    f = pl_module.backbone(images)
                    z = pl_module.expander(f)
                features.append(f.float())
                embeddings.append(z.float())
        finally:
            for m, training in modes.items():
                m.train(training)
        return health_metrics(torch.cat(embeddings), torch.cat(features), self.std_threshold)

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
