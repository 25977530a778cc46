"""VICRegModule in a real Lightning Trainer: the probe is detached, the schedule is stepped per
iteration, every term is logged."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from vicreg_lightning.config import preset
from vicreg_lightning.module import VICRegModule
from vicreg_lightning.optim import scaled_lr, warmup_cosine

MODEL = preset("model", "digits", "small_stem=true", "expander=32-16")
OPTIM = preset("optim", "lars", "base_lr=0.4", "warmup_epochs=1.0", "probe_lr=0.5")


def module(num_classes: int = 3, batch_size: int = 8) -> VICRegModule:
    return VICRegModule(model=MODEL, loss={}, optim=OPTIM, num_classes=num_classes, batch_size=batch_size,
                        image_size=32)


class TwoViewData(pl.LightningDataModule):
    def __init__(self, n: int = 32, batch_size: int = 8) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        view_a = torch.randn(n, 3, 8, 8, generator=g)
        self.views = view_a, view_a + 0.1 * torch.randn(n, 3, 8, 8, generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)
        self.batch_size = batch_size

    def train_dataloader(self):
        pairs = TensorDataset(*self.views, self.labels)
        return DataLoader(pairs, batch_size=self.batch_size, drop_last=True,
                          collate_fn=lambda rows: ((torch.stack([r[0] for r in rows]),
                                                    torch.stack([r[1] for r in rows])),
                                                   torch.stack([r[2] for r in rows])))

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.views[0], self.labels), batch_size=self.batch_size)


class RecordLR(pl.Callback):
    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])


def fit(model: VICRegModule, epochs: int, callbacks=()) -> pl.Trainer:
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks),
                         num_sanity_val_steps=0, log_every_n_steps=1)
    trainer.fit(model, datamodule=TwoViewData())
    return trainer


def test_lr_follows_warmup_cosine_per_iteration():
    recorder = RecordLR()
    fit(module(), epochs=3, callbacks=[recorder])
    total, warmup = 12, 4  # 32 samples / batch 8 = 4 steps per epoch; 1 warmup epoch
    peak = scaled_lr(OPTIM["base_lr"], 8)
    for step in (0, 2, 4, 7, 11):
        encoder_lr, probe_lr = recorder.lrs[step][0], recorder.lrs[step][-1]
        assert encoder_lr == pytest.approx(peak * warmup_cosine(step, total, warmup, 0.001))
        # The probe has no warmup: cosine from its own lr.
        assert probe_lr == pytest.approx(OPTIM["probe_lr"] * warmup_cosine(step, total, 0, 0.001))


def test_probe_does_not_reach_the_backbone():
    model = module()
    images, labels = torch.randn(8, 3, 8, 8), torch.randint(0, 3, (8,))
    _, probe_loss = model._probe_loss(model.backbone(images), labels)
    probe_loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.probe[1].weight.grad.abs().sum() > 0


def test_unlabelled_samples_are_ignored_by_the_probe():
    model = module().eval()  # the probe's BatchNorm on running statistics: rows are independent
    features = torch.randn(4, model.feature_dim)
    _, loss_all_unlabelled = model._probe_loss(features, torch.full((4,), -1))
    assert loss_all_unlabelled.item() == 0.0
    _, mixed = model._probe_loss(features, torch.tensor([0, -1, 2, -1]))
    _, labelled_only = model._probe_loss(features[[0, 2]], torch.tensor([0, 2]))
    assert mixed.item() == pytest.approx(labelled_only.item(), rel=1e-6)


def test_fit_logs_every_term_and_lowers_the_loss():
    model = module()
    first = fit(model, epochs=1).callback_metrics["train/loss"].item()
    trainer = fit(model, epochs=6)
    metrics = trainer.callback_metrics
    for key in ("train/loss", "train/invariance", "train/variance", "train/covariance",
                "train/invariance_weighted", "train/variance_weighted", "train/covariance_weighted",
                "train/probe_loss", "train/probe_acc1", "train/embed_std_mean", "train/embed_std_min",
                "lr", "val/probe_acc1", "val/probe_acc5", "val/probe_loss"):
        assert key in metrics, key
    weighted = (metrics["train/invariance_weighted"] + metrics["train/variance_weighted"]
                + metrics["train/covariance_weighted"])
    assert metrics["train/loss"].item() == pytest.approx(weighted.item(), rel=1e-5)
    assert metrics["train/embed_std_min"] <= metrics["train/embed_std_mean"]
    assert metrics["train/loss"].item() < first


class RecordGradNorms(pl.Callback):
    """After each optimiser step (Lightning zeroes the gradients at the next step's start): the
    gradient norms as the optimiser used them, clipped or not."""

    def __init__(self) -> None:
        self.norms: list[tuple[float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        def norm(modules):
            return torch.cat([p.grad.flatten() for m in modules for p in m.parameters()]).norm().item()

        self.norms.append((norm([pl_module.backbone, pl_module.expander]), norm([pl_module.probe])))


def test_clip_grad_norm_clips_the_encoders_gradient_alone():
    def norms(clip):
        torch.manual_seed(0)
        model = VICRegModule(model=MODEL, loss={}, optim={**OPTIM, "clip_grad_norm": clip}, num_classes=3,
                             batch_size=8, image_size=32)
        record = RecordGradNorms()
        fit(model, epochs=1, callbacks=[record])
        return record.norms

    clipped, unclipped = norms(1e-3), norms(None)
    assert all(encoder <= 1e-3 * (1 + 1e-4) for encoder, _ in clipped)
    assert all(encoder > 1e-2 for encoder, _ in unclipped)  # the negative control: clipping did something
    assert clipped[0][1] == pytest.approx(unclipped[0][1], rel=1e-5) and clipped[0][1] > 1e-3  # the probe's: as is
