"""Multi-crop VICReg without a run: the generalised loss against a naive loop over views and pairs,
and the local crops the data module makes (in the workers and on the device)."""

from __future__ import annotations

import pytest
import torch

from tests.runs import configs
from vicreg_lightning import VICRegLoss
from vicreg_lightning.data.datamodule import VICRegDataModule


COEFFS = dict(sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, eps=1e-4)


def naive_multicrop(views, sim_coeff, std_coeff, cov_coeff, eps, weighting):
    """VICRegL's global loss (main_vicregl.py), written out: invariance summed over every ordered
    pair of a global view (the first two) with another view and divided by the pair count; variance
    and covariance summed over the views and divided by their count; then the factor 2 of the
    two-view loss where it has one (covariance, and the paper's variance)."""
    n, d = views[0].shape
    pairs, invariance = 0, 0.0
    for i in range(2):
        for j in range(len(views)):
            if j != i:
                invariance = invariance + ((views[i] - views[j]) ** 2).sum() / (n * d)
                pairs += 1
    invariance = invariance / pairs
    variance, covariance = 0.0, 0.0
    for z in views:
        centred = z - z.mean(dim=0)
        cov = centred.T @ centred / (n - 1)
        variance = variance + torch.relu(1 - torch.sqrt(torch.diag(cov) + eps)).mean()
        covariance = covariance + (cov - torch.diag(torch.diag(cov))).pow(2).sum() / d
    variance = variance / len(views) * (2 if weighting == "paper" else 1)
    covariance = covariance / len(views) * 2
    return sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance, invariance, variance, covariance


def views_of(n, d, count, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=dtype) * torch.linspace(0.2, 3.0, d, dtype=dtype)
    return [base + 0.5 * torch.randn(n, d, generator=g, dtype=dtype) for _ in range(count)]


def loss_and_grads(fn, views):
    leaves = [v.clone().requires_grad_() for v in views]
    out = fn(leaves)
    total = out[0] if isinstance(out, tuple) else out.loss
    total.backward()
    terms = out[1:] if isinstance(out, tuple) else (out.invariance, out.variance, out.covariance)
    return total.detach(), [t.detach() for t in terms], [leaf.grad for leaf in leaves]


@pytest.mark.parametrize("weighting", ["official", "paper"])
def test_without_local_crops_the_loss_is_the_two_view_loss(weighting):
    # The naive loop at two views is the two-view formula (test_loss.py checks the loss against it
    # alone); float32, as training runs it.
    views = [v.float() for v in views_of(24, 40, 2, seed=3)]
    loss = VICRegLoss(**COEFFS, weighting=weighting)
    ours = loss_and_grads(lambda v: loss(*v), views)
    naive = loss_and_grads(lambda v: naive_multicrop(v, weighting=weighting, **COEFFS), views)
    torch.testing.assert_close(ours[0], naive[0], rtol=1e-6, atol=1e-6)
    for a, b in zip(ours[2], naive[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    # The official two-view terms, term by term: s(Z, Z'), [v(Z) + v(Z')]/2 (official), c(Z) + c(Z').
    z_a, z_b = views
    out = loss(z_a, z_b)
    torch.testing.assert_close(out.invariance, ((z_a - z_b) ** 2).mean())
    torch.testing.assert_close(out.covariance, naive[1][2])


@pytest.mark.parametrize("weighting", ["official", "paper"])
@pytest.mark.parametrize("local_crops", [1, 2, 6])
def test_with_local_crops_the_loss_and_gradients_equal_the_naive_loop(weighting, local_crops):
    views = views_of(16, 24, 2 + local_crops, seed=local_crops)
    ours = loss_and_grads(lambda v: VICRegLoss(**COEFFS, weighting=weighting)(*v), views)
    naive = loss_and_grads(lambda v: naive_multicrop(v, weighting=weighting, **COEFFS), views)
    torch.testing.assert_close(ours[0], naive[0], rtol=1e-5, atol=0)
    for a, b in zip(ours[1], naive[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
    for a, b in zip(ours[2], naive[2], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
    # A local crop changes the loss (the negative control): the two views alone give another value.
    assert not torch.isclose(VICRegLoss(**COEFFS, weighting=weighting)(*views[:2]).loss, ours[0], rtol=1e-3)


def test_local_crops_of_another_shape_are_refused():
    z = torch.randn(8, 16)
    with pytest.raises(ValueError, match=r"differ in shape: \(8, 16\) vs \(8, 16\) vs \(4, 16\)"):
        VICRegLoss()(z, z, z[:4])


@pytest.mark.parametrize("on_device", [False, True])
def test_the_data_module_makes_local_crops_after_the_two_views(on_device):
    data, aug = configs("digits", batch_size=8, size=16)
    aug.num_local_crops, aug.local_size, aug.on_device = 2, 8, on_device
    dm = VICRegDataModule(data, aug, seed=0)
    dm.setup("fit")
    images, labels = next(iter(dm.train_dataloader()))
    views, _ = dm.on_after_batch_transfer((images, labels), 0)
    assert [tuple(v.shape) for v in views] == [(8, 3, 16, 16)] * 2 + [(8, 3, 8, 8)] * 2
    assert all(v.dtype == torch.float32 for v in views)
    assert not torch.equal(views[2], views[3])  # each local crop is drawn for itself
    if not on_device:  # in the workers each view is keyed by (seed, epoch, sample, view): the same again
        again, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
        assert all(torch.equal(a, b) for a, b in zip(views, again, strict=True))


def test_local_crops_whose_views_cannot_fit_in_memory_are_refused_before_any_is_made(monkeypatch):
    from vicreg_lightning.errors import ConfigError

    monkeypatch.setattr("vicreg_lightning.data.datamodule.available_memory", lambda: 24 * 2**30)  # this machine's
    data, aug = configs("digits", batch_size=128, size=32)
    aug.num_local_crops, aug.local_size = 100_000, 16
    with pytest.raises(ConfigError, match=r"augment.num_local_crops=100000: one batch of views needs 36.6 GiB "
                                          r"\(data.batch_size=128 x \(2 x 32\^2 \+ 100000 x 16\^2\) pixels in "
                                          r"float32\), more than this machine has \(24.0 GiB available\)"):
        VICRegDataModule(data, aug, seed=0)
    aug.num_local_crops = 6  # a multi-crop recipe's count fits
    VICRegDataModule(data, aug, seed=0)
