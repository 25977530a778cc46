"""Representation-health metrics against direct computations, and the RepresentationHealth callback
in a real Lightning Trainer: it logs, it leaves the modules' modes alone, it sounds the alarm."""

from __future__ import annotations

import csv
import math
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vicreg_lightning.callbacks.health import RepresentationCollapseWarning, RepresentationHealth
from vicreg_lightning.config import preset
from vicreg_lightning.metrics.health import HEALTH_METRIC_NAMES, health_metrics, mean_abs_offdiag_corr, rankme, std_stats
from vicreg_lightning.module import VICRegModule


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one intra-op thread runs them as fast, and does not slow down tenfold
    when other processes keep the CPU busy (threads spinning on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------- the functions


def orthonormal(n: int, k: int, g: torch.Generator) -> torch.Tensor:
    q, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    return q


def with_singular_values(n: int, d: int, values: list[float], seed: int = 0) -> torch.Tensor:
    """An (n, d) matrix U diag(values) Vᵀ with random orthonormal U, V."""
    g = torch.Generator().manual_seed(seed)
    k = len(values)
    u, v = orthonormal(n, k, g), orthonormal(d, k, g)
    return (u @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ v.T).float()


@pytest.mark.parametrize("n, d, k", [(64, 32, 1), (64, 32, 5), (40, 96, 7), (30, 30, 30)])
def test_rankme_of_equal_singular_values_is_the_rank(n, d, k):
    x = with_singular_values(n, d, [2.5] * k, seed=k)
    assert torch.linalg.matrix_rank(x).item() == k
    assert rankme(x).item() == pytest.approx(k, abs=1e-3)


def test_rankme_of_unequal_singular_values_is_between_1_and_the_rank():
    k = 6
    x = with_singular_values(50, 20, [10.0, 5.0, 2.0, 1.0, 0.5, 0.1])
    value = rankme(x).item()
    assert 1.0 + 0.1 < value < k - 0.1
    # Flatter spectrum, higher RankMe.
    assert rankme(with_singular_values(50, 20, [10.0, 8.0, 6.0, 4.0, 3.0, 2.0])).item() > value


def test_rankme_of_an_isotropic_gaussian_is_close_to_full():
    """Marchenko-Pastur: the singular values of an N×D Gaussian (D/N = 1/8) lie within
    √N·(1 ± √(D/N)), a spread that costs ~2% of the effective rank; assert within 5%."""
    g = torch.Generator().manual_seed(0)
    for n, d in ((512, 64), (64, 512)):
        x = torch.randn(n, d, generator=g)
        value = rankme(x).item()
        assert 0.95 * min(n, d) < value <= min(n, d) * (1 + 1e-3)


def test_rankme_is_scale_invariant_and_collapse_scores_one():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(100, 16, generator=g)
    assert rankme(1000 * x).item() == pytest.approx(rankme(x).item(), rel=1e-5)
    constant_rows = torch.full((100, 16), 3.0)  # complete collapse: rank 1, not centred away
    assert rankme(constant_rows).item() == pytest.approx(1.0, abs=1e-3)
    assert rankme(torch.zeros(100, 16)).item() == pytest.approx(1.0, abs=1e-3)
    assert math.isnan(rankme(torch.tensor([[1.0, float("nan")], [0.0, 1.0]])).item())


def test_std_stats_match_torch():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(40, 30, generator=g) * torch.linspace(0.01, 2.0, 30) + 100.0
    std = x.double().std(dim=0, unbiased=True)
    stats = std_stats(x, threshold=0.5)
    assert stats["min"].item() == pytest.approx(std.min().item(), rel=1e-5)
    assert stats["mean"].item() == pytest.approx(std.mean().item(), rel=1e-5)
    assert stats["frac_below"].item() == pytest.approx((std < 0.5).double().mean().item())
    assert 0 < stats["frac_below"].item() < 1
    assert all(v.dtype == torch.float32 and v.ndim == 0 for v in stats.values())


def off_diagonal_mean_abs(corr: np.ndarray) -> float:
    return float(np.abs(corr[~np.eye(len(corr), dtype=bool)]).mean())


def test_mean_abs_offdiag_corr_matches_numpy():
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(12, 12))
    x = rng.normal(size=(200, 12)) @ mixing + rng.normal(size=12) * 50  # correlated, offset columns
    expected = off_diagonal_mean_abs(np.corrcoef(x, rowvar=False))
    assert mean_abs_offdiag_corr(torch.tensor(x, dtype=torch.float32)).item() == pytest.approx(expected, abs=1e-5)
    # Blocks of rows give the same answer as one product.
    blocked = mean_abs_offdiag_corr(torch.tensor(x, dtype=torch.float32), block_size=5).item()
    assert blocked == pytest.approx(expected, abs=1e-5)


def test_mean_abs_offdiag_corr_leaves_constant_columns_out():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100, 6)) @ rng.normal(size=(6, 6))
    x[:, 2] = 3.7  # numpy: NaN row and column
    x[:, 4] = 0.0
    with np.errstate(invalid="ignore"):
        assert np.isnan(np.corrcoef(x, rowvar=False)).any()
    expected = off_diagonal_mean_abs(np.corrcoef(np.delete(x, [2, 4], axis=1), rowvar=False))
    value = mean_abs_offdiag_corr(torch.tensor(x, dtype=torch.float32)).item()
    assert value == pytest.approx(expected, abs=1e-5)
    # Fewer than two live dimensions: no pair, 0 and not NaN.
    assert mean_abs_offdiag_corr(torch.full((10, 4), 2.0)).item() == 0.0


def test_mean_abs_offdiag_corr_of_perfectly_correlated_columns_is_one():
    t = torch.linspace(-1, 1, 50)[:, None]
    assert mean_abs_offdiag_corr(torch.cat([t, -2 * t, 3 * t + 1], dim=1)).item() == pytest.approx(1.0, abs=1e-5)


def test_health_metrics_names_and_values():
    g = torch.Generator().manual_seed(5)
    features = torch.randn(64, 20, generator=g)
    embeddings = torch.cat([torch.randn(64, 10, generator=g), torch.zeros(64, 6)], dim=1)  # 6 dead dims
    metrics = health_metrics(embeddings, features, std_threshold=0.1)
    assert tuple(metrics) == HEALTH_METRIC_NAMES
    assert all(name.startswith(("embed_", "feat_")) for name in metrics)
    assert metrics["embed_std_frac_below"].item() == pytest.approx(6 / 16)
    assert metrics["embed_std_min"].item() == 0.0
    assert metrics["embed_rankme"].item() <= 10 * (1 + 1e-3)
    assert metrics["feat_rankme"].item() == pytest.approx(rankme(features).item())
    assert all(torch.isfinite(v) for v in metrics.values())
    with pytest.raises(ValueError, match="same samples"):
        health_metrics(embeddings[:10], features)
    with pytest.raises(ValueError, match="2-D"):
        rankme(torch.zeros(4, 3, 2))


# ---------------------------------------------------------------------------- the callback


@pytest.mark.parametrize(
    "kwargs, bad",
    [
        ({"every_n_steps": -1}, "every_n_steps=-1"),
        ({"every_n_steps": 2.5}, "every_n_steps=2.5"),
        ({"num_samples": 1}, "num_samples=1"),
        ({"std_threshold": 0.0}, "std_threshold=0.0"),
        ({"rankme_min": -3}, "rankme_min=-3"),
        ({"std_min": float("nan")}, "std_min=nan"),
        ({"on_collapse": "crash"}, "on_collapse='crash'"),
    ],
)
def test_callback_rejects_bad_arguments(kwargs, bad):
    with pytest.raises(ValueError, match=bad):
        RepresentationHealth(**kwargs)


class ModeRecorder(nn.Module):
    """Identity that remembers (training mode, grad enabled) at every forward."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[bool, bool]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append((self.training, torch.is_grad_enabled()))
        return x


class Tiny(pl.LightningModule):
    """backbone: images -> 16 features; expander: 16 -> 8 embeddings, trained on a simple loss,
    or zeroed and frozen (``collapsed``): every embedding is 0."""

    def __init__(self, collapsed: bool = False) -> None:
        super().__init__()
        self.recorder = ModeRecorder()
        self.backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 16), nn.BatchNorm1d(16), self.recorder)
        self.expander = nn.Linear(16, 8, bias=False)
        if collapsed:
            nn.init.zeros_(self.expander.weight)
            self.expander.requires_grad_(False)

    def training_step(self, batch, batch_idx):
        images, _ = batch
        z = self.expander(self.backbone(images))
        return (z - 1).square().mean() + self.backbone(images).square().mean()

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", self.backbone(batch[0]).square().mean())

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.parameters() if p.requires_grad], lr=0.01)


def images_and_labels(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 3, (n,), generator=g))


class ImageData(pl.LightningDataModule):
    def __init__(self, n_train: int = 64, n_val: int = 48, batch_size: int = 8) -> None:
        super().__init__()
        self.train_set, self.val_set = images_and_labels(n_train, 0), images_and_labels(n_val, 1)
        self.batch_size = batch_size

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, drop_last=True)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size)


class TwoViewData(ImageData):
    """((view_a, view_b), label) training batches, as VICRegModule expects."""

    def train_dataloader(self):
        def collate(rows):
            images = torch.stack([r[0] for r in rows])
            return (images, images + 0.1 * torch.randn_like(images)), torch.stack([r[1] for r in rows])

        return DataLoader(self.train_set, batch_size=self.batch_size, drop_last=True, collate_fn=collate)


def trainer(callback: RepresentationHealth, logger=False, **kwargs) -> pl.Trainer:
    options = {"max_epochs": 1, "num_sanity_val_steps": 0, "log_every_n_steps": 1} | kwargs
    return pl.Trainer(accelerator="cpu", logger=logger, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, callbacks=[callback], **options)


def health_keys(metrics) -> set[str]:
    return {key for key in metrics if key.startswith("health/")}


def test_vicreg_run_logs_every_health_metric_to_callback_metrics_and_logger(tmp_path):
    model = VICRegModule(
        model=preset("model", "digits", "small_stem=true", "expander=32-16"),
        loss={}, optim=preset("optim", "lars", "base_lr=0.4", "warmup_epochs=1.0", "probe_lr=0.5"),
        num_classes=3, batch_size=8, image_size=32,
    )
    callback = RepresentationHealth(every_n_steps=3, num_samples=12)
    fit = trainer(callback, logger=CSVLogger(tmp_path, name="csv", version=0), log_every_n_steps=2)
    fit.fit(model, datamodule=TwoViewData(n_train=32, n_val=16))
    assert health_keys(fit.callback_metrics) == {f"health/{name}" for name in HEALTH_METRIC_NAMES}
    assert all(torch.isfinite(fit.callback_metrics[f"health/{name}"]) for name in HEALTH_METRIC_NAMES)
    # 12 images (a batch of 8 and 4 of the next): RankMe is at most 12.
    assert 1.0 < fit.callback_metrics["health/embed_rankme"].item() <= 12 * (1 + 1e-3)
    # The loggers get every check at its own step, whatever log_every_n_steps is: the step check at 3
    # and the end of validation at 4 (4 steps per epoch).
    with open(tmp_path / "csv" / "version_0" / "metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("health/embed_rankme")]
    assert [int(row["step"]) for row in rows] == [3, 4]
    assert model.backbone.training and model.expander.training


def test_checks_run_in_eval_mode_without_grad_and_restore_train_mode():
    model = Tiny()
    callback = RepresentationHealth(every_n_steps=2, num_samples=16)
    fit = trainer(callback, max_steps=6, limit_val_batches=2)
    fit.fit(model, datamodule=ImageData())
    no_grad_calls = [training for training, grad in model.recorder.calls if not grad]
    grad_calls = [training for training, grad in model.recorder.calls if grad]
    # 3 step checks (2, 4, 6) × 2 batches of 8 images; validation's forwards run without grad, too.
    assert len(no_grad_calls) >= 6 and not any(no_grad_calls)
    assert len(grad_calls) == 2 * 6 and all(grad_calls)  # two backbone passes per training step
    assert model.training
    assert health_keys(fit.callback_metrics)


def test_without_a_datamodule_the_first_validation_batches_are_used():
    model = Tiny()
    callback = RepresentationHealth(every_n_steps=0, num_samples=12)
    fit = trainer(callback, max_epochs=1)
    data = ImageData()
    fit.fit(model, train_dataloaders=data.train_dataloader(), val_dataloaders=data.val_dataloader())
    assert health_keys(fit.callback_metrics) == {f"health/{name}" for name in HEALTH_METRIC_NAMES}
    assert sum(len(images) for images in callback._batches) == 12


def test_healthy_representation_raises_no_alarm():
    callback = RepresentationHealth(every_n_steps=2, num_samples=32, rankme_min=2.0, std_min=1e-3,
                                    on_collapse="stop")
    fit = trainer(callback, max_steps=6)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RepresentationCollapseWarning)
        fit.fit(Tiny(), datamodule=ImageData())
    assert fit.global_step == 6
    assert fit.callback_metrics["health/embed_rankme"].item() > 2.0


def test_collapse_warns_and_training_goes_on():
    callback = RepresentationHealth(every_n_steps=2, num_samples=32, rankme_min=2.0, std_min=0.01)
    fit = trainer(callback, max_steps=4)
    with pytest.warns(RepresentationCollapseWarning) as record:
        fit.fit(Tiny(collapsed=True), datamodule=ImageData())
    messages = [str(w.message) for w in record if issubclass(w.category, RepresentationCollapseWarning)]
    assert len(messages) == 2  # steps 2 and 4, one warning each naming both metrics
    assert "step 2" in messages[0] and "health/embed_rankme=1 < 2" in messages[0]
    assert "health/embed_std_mean=0 < 0.01" in messages[0] and "training continues" in messages[0]
    assert fit.global_step == 4


def test_collapse_stops_training():
    callback = RepresentationHealth(every_n_steps=2, num_samples=32, rankme_min=2.0, on_collapse="stop")
    fit = trainer(callback, max_steps=20, max_epochs=5)
    with pytest.warns(RepresentationCollapseWarning, match=r"step 2: health/embed_rankme=1 < 2; stopping"):
        fit.fit(Tiny(collapsed=True), datamodule=ImageData())
    assert fit.global_step == 2 < 20
    assert fit.callback_metrics["health/embed_rankme"].item() == pytest.approx(1.0, abs=1e-3)
