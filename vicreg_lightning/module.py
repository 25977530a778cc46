"""VICRegModule: backbone → expander → VICReg loss, with an online linear probe."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any, NamedTuple

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassAccuracy

from vicreg_lightning.backbones import build_backbone, is_convnet, load_init_weights
from vicreg_lightning.data.catalog import UNLABELED
from vicreg_lightning.divergence import DivergenceWatch
from vicreg_lightning.loss import VICRegLoss, VICRegLossOutput
from vicreg_lightning.micro_batch import micro_batched_step
from vicreg_lightning.expander import build_expander
from vicreg_lightning.optim import build_optimizer
from vicreg_lightning.resume import capture_rng_states, restore_rng_states


def resolve_views_forward(mode: str, *modules: nn.Module) -> str:
    """``auto``: ``concat`` when no layer of ``modules`` normalises with batch statistics (one pass
    is then the same computation as two), else ``separate``; other modes as given."""
    if mode != "auto":
        return mode
    batch_statistics = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for module in modules for m in module.modules())
    return "separate" if batch_statistics else "concat"


class StepOutputs(NamedTuple):
    """What a training step logs, besides its loss."""

    terms: VICRegLossOutput
    z_a: Tensor
    z_b: Tensor
    logits: Tensor  # the probe's, on both views' features
    probe_loss: Tensor
    labels: Tensor  # both views' labels


class VICRegModule(pl.LightningModule):
    """VICReg pretraining of any image encoder, with an online linear probe.

    The probe is a linear layer on the *detached* backbone features, trained with its own
    cross-entropy in its own parameter group, so it measures the representation without shaping
    it.

    ``model.views_forward`` says how the two views go through backbone and expander: ``separate``,
    two passes as in the official code, so that BatchNorm computes its statistics per view;
    ``concat``, one pass over both views (fewer, larger kernels: faster for small per-device
    batches on a GPU), where BatchNorm's statistics mix the two views; ``auto``, one pass when no
    layer normalises with batch statistics (then both are the same computation), else two.
    Local crops (multi-crop), when the batch has any, go through backbone and expander in one pass
    of their own, after the two views; the probe reads the two views' features only.
    ``model.channels_last`` (default: when CUDA is available and the backbone is a convolutional
    network) stores the backbone's convolutions channels-last, and ``model.compile`` compiles the
    backbone with ``torch.compile``. ``micro_batch_size`` (``data.micro_batch_size``) runs the
    backbone on micro-batches of that many samples and everything after it on the whole batch
    (:mod:`vicreg_lightning.micro_batch`: exact for backbones without batch statistics).

    Args:
        model: the ``conf/model`` section (backbone, expander, speed settings).
        loss: keyword arguments of :class:`~vicreg_lightning.loss.VICRegLoss` (``conf/loss``).
        optim: the ``conf/optim`` section: keyword arguments of
            :func:`~vicreg_lightning.optim.build_optimizer`, and ``clip_grad_norm``.
        num_classes: classes of the probe.
        batch_size: the global batch, for ``lr = base_lr · batch / 256``.
        image_size: the views' crop size (``augment.size``), which some backbones are built for.
        local_crop_size: the local crops' size (``augment.local_size``) when there are any, else None.
        micro_batch_size: samples per backbone pass (``data.micro_batch_size``); None: the whole batch.
    """

    def __init__(
        self,
        model: Mapping[str, Any],
        loss: Mapping[str, Any],
        optim: Mapping[str, Any],
        num_classes: int,
        batch_size: int,
        image_size: int,
        local_crop_size: int | None = None,
        micro_batch_size: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        built = build_backbone(model, image_size, any_image_size=local_crop_size is not None)
        self.backbone, self.feature_dim = built.module, built.feature_dim
        if model["init_weights"]:
            load_init_weights(self.backbone, model["init_weights"], built.arch)
        self.expander = build_expander(self.feature_dim, model["expander"])
        self.views_forward = resolve_views_forward(model["views_forward"], self.backbone, self.expander)
        self.micro_batch_size = micro_batch_size
        # Decided here, before Lightning moves the model and wraps it (DDP): .to(device) keeps it.
        channels_last = model["channels_last"]
        if channels_last is None:
            channels_last = torch.cuda.is_available() and is_convnet(self.backbone)
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
        if model["compile"]:
            # In place, so that the parameter names (checkpoints, exports) stay those of the backbone.
            self.backbone.compile()
        self.criterion = VICRegLoss(**loss)
        self.divergence = DivergenceWatch()
        # BatchNorm without affine parameters standardises the features for the linear layer (as
        # MAE's linear probe): the probe converges in a few hundred steps whatever their scale.
        self.probe = nn.Sequential(
            nn.BatchNorm1d(self.feature_dim, affine=False), nn.Linear(self.feature_dim, num_classes)
        )
        top5 = min(5, num_classes)
        self.train_probe_acc1 = MulticlassAccuracy(num_classes, top_k=1, ignore_index=UNLABELED)
        self.val_probe_acc1 = MulticlassAccuracy(num_classes, top_k=1, ignore_index=UNLABELED)
        self.val_probe_acc5 = MulticlassAccuracy(num_classes, top_k=top5, ignore_index=UNLABELED)
        # Weighted by each batch's labelled count, and synchronised as metric state, so that the
        # value is the mean over the whole validation set on any number of ranks.
        self.val_probe_loss = MeanMetric()

    def forward(self, images: Tensor) -> Tensor:
        """Backbone features (the representation that is evaluated and shipped)."""
        return self.backbone(self._memory_format(images))

    def _memory_format(self, images: Tensor) -> Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def encode(self, views: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Backbone features of the two views (in one pass or two: ``views_forward``) and of the
        local crops (all in one pass of their own)."""
        x_a, x_b, *local_crops = views
        if self.views_forward == "concat":
            f_a, f_b = self.backbone(self._memory_format(torch.cat([x_a, x_b]))).chunk(2)
        else:
            f_a, f_b = self.backbone(self._memory_format(x_a)), self.backbone(self._memory_format(x_b))
        if not local_crops:
            return f_a, f_b
        return f_a, f_b, *self.backbone(self._memory_format(torch.cat(local_crops))).chunk(len(local_crops))

    def expand(self, features: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """Expander embeddings of :meth:`encode`'s features, the views as the backbone saw them."""
        f_a, f_b, *f_local = features
        if self.views_forward == "concat":
            z_a, z_b = self.expander(torch.cat([f_a, f_b])).chunk(2)
        else:
            z_a, z_b = self.expander(f_a), self.expander(f_b)
        if not f_local:
            return z_a, z_b
        return z_a, z_b, *self.expander(torch.cat(f_local)).chunk(len(f_local))

    def _probe_loss(self, features: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.probe(features.detach())
        labelled = (labels != UNLABELED).sum()
        # Sum over labelled samples / max(count, 1): a batch with no labels gives 0, not NaN.
        loss = F.cross_entropy(logits, labels, ignore_index=UNLABELED, reduction="sum") / labelled.clamp(min=1)
        return logits, loss

    def _objective(self, features: tuple[Tensor, ...], labels: Tensor) -> tuple[Tensor, StepOutputs]:
        """VICReg on the expanded features plus the probe's loss on the two views' features."""
        z_a, z_b, *z_local = self.expand(features)
        terms = self.criterion(z_a, z_b, *z_local)
        both_labels = torch.cat([labels, labels])
        logits, probe_loss = self._probe_loss(torch.cat(features[:2]), both_labels)
        return terms.loss + probe_loss, StepOutputs(terms, z_a, z_b, logits, probe_loss, both_labels)

    def step_loss(self, views: tuple[Tensor, ...], labels: Tensor) -> tuple[Tensor, StepOutputs]:
        """The loss a training step back-propagates, in one pass or in micro-batches."""
        objective = partial(self._objective, labels=labels)
        if self.micro_batch_size is None:
            return objective(self.encode(views))
        return micro_batched_step(self.encode, views, self.micro_batch_size, objective, self.backbone,
                                  [*self.expander.parameters(), *self.probe.parameters()])

    def training_step(self, batch: tuple[tuple[Tensor, ...], Tensor], batch_idx: int) -> Tensor:
        views, labels = batch
        loss, out = self.step_loss(tuple(views), labels)
        self.divergence.update(self.global_step, out.terms.invariance, out.terms.variance, out.terms.covariance)
        if self._logs_this_step():
            self.divergence.check(self.global_step)
            self._log_training_step(out)
        return loss

    def _logs_this_step(self) -> bool:
        # Lightning's logging interval, and each epoch's last step (so the final values reach
        # metrics.json): between them nothing is logged, so nothing waits on the device.
        trainer = self.trainer
        return (self.global_step + 1) % max(1, trainer.log_every_n_steps) == 0 or trainer.is_last_batch

    def _log_training_step(self, out: StepOutputs) -> None:
        terms = out.terms
        std = torch.cat([out.z_a, out.z_b]).detach().float().std(dim=0)
        self.log_dict(
            {
                "train/loss": terms.loss,
                "train/invariance": terms.invariance,
                "train/variance": terms.variance,
                "train/covariance": terms.covariance,
                "train/invariance_weighted": self.criterion.sim_coeff * terms.invariance,
                "train/variance_weighted": self.criterion.std_coeff * terms.variance,
                "train/covariance_weighted": self.criterion.cov_coeff * terms.covariance,
                "train/probe_loss": out.probe_loss,
                "train/probe_acc1": self.train_probe_acc1(out.logits, out.labels),
                "train/embed_std_mean": std.mean(),
                "train/embed_std_min": std.min(),
            },
            on_step=True,
            on_epoch=False,
            prog_bar=False,
        )
        # Not on the progress bar: it reads its values on the host at every step.
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, prog_bar=False)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        images, labels = batch
        logits, probe_loss = self._probe_loss(self.backbone(images), labels)
        self.val_probe_acc1(logits, labels)
        self.val_probe_acc5(logits, labels)
        self.val_probe_loss(probe_loss, weight=(labels != UNLABELED).sum())
        self.log("val/probe_loss", self.val_probe_loss)
        self.log("val/probe_acc1", self.val_probe_acc1)
        self.log("val/probe_acc5", self.val_probe_acc5)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # A checkpoint between two logging steps (a mid-epoch validation, every_n_train_steps) must
        # not hold weights that went non-finite since the last check.
        self.divergence.check(self.global_step)
        # Lightning saves no RNG state; without it a resumed run augments differently.
        checkpoint["rng_states"] = capture_rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng_states" in checkpoint:
            restore_rng_states(checkpoint["rng_states"])

    def configure_gradient_clipping(self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
                                    gradient_clip_algorithm: str | None = None) -> None:
        # Lightning's own (trainer.gradient_clip_val) clips every parameter, the probe's included;
        # optim.clip_grad_norm clips the encoder's alone, the gradient that VICReg makes.
        super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        max_norm = self.hparams.optim["clip_grad_norm"]
        if max_norm is not None:
            encoder = [p for module in (self.backbone, self.expander) for p in module.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(encoder, max_norm)

    def configure_optimizers(self) -> dict[str, Any]:
        total_steps = max(1, int(self.trainer.estimated_stepping_batches))
        # conf/optim is build_optimizer's keyword arguments, but for the clip (configure_gradient_clipping).
        settings = {key: value for key, value in self.hparams.optim.items() if key != "clip_grad_norm"}
        optimizer, schedule = build_optimizer(
            nn.ModuleList([self.backbone, self.expander]),
            self.probe,
            global_batch_size=self.hparams.batch_size,
            total_steps=total_steps,
            steps_per_epoch=total_steps / max(1, self.trainer.max_epochs or 1),
            **settings,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
