"""VICRegLoss against an independent, naive implementation of the official formula."""

from __future__ import annotations

import math

import pytest
import torch

from vicreg_lightning import VICRegLoss


def naive_vicreg(z_a, z_b, sim_coeff, std_coeff, cov_coeff, eps, weighting):
    """The official main_vicreg.py formula written out with loops and an explicit D×D matrix."""
    n, d = z_a.shape
    invariance = sum((z_a[i, j] - z_b[i, j]) ** 2 for i in range(n) for j in range(d)) / (n * d)

    def variance(z):
        total = 0.0
        for j in range(d):
            column = z[:, j]
            var = ((column - column.mean()) ** 2).sum() / (n - 1)
            total = total + torch.relu(1 - torch.sqrt(var + eps))
        return total / d

    def covariance(z):
        centred = z - z.mean(dim=0)
        cov = torch.zeros(d, d, dtype=z.dtype)
        for i in range(n):
            cov = cov + torch.outer(centred[i], centred[i])
        cov = cov / (n - 1)
        off_diagonal = cov - torch.diag(torch.diag(cov))
        return (off_diagonal**2).sum() / d

    var = variance(z_a) + variance(z_b)
    if weighting == "official":
        var = var / 2
    cov = covariance(z_a) + covariance(z_b)
    return sim_coeff * invariance + std_coeff * var + cov_coeff * cov, invariance, var, cov


def embeddings(n, d, seed, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    # Mixed scales so that some dimensions sit under the std hinge and some above it.
    scale = torch.linspace(0.2, 3.0, d, dtype=dtype)
    z_a = torch.randn(n, d, generator=g, dtype=dtype) * scale
    z_b = z_a + 0.5 * torch.randn(n, d, generator=g, dtype=dtype)
    return z_a, z_b


@pytest.mark.parametrize("n,d", [(12, 40), (40, 12), (16, 16)], ids=["N<D", "N>D", "N=D"])
@pytest.mark.parametrize("weighting", ["official", "paper"])
def test_loss_and_gradients_match_naive_reference(n, d, weighting):
    coeffs = dict(sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, eps=1e-4)
    z_a, z_b = embeddings(n, d, seed=n * 100 + d)
    ours_a, ours_b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
    ref_a, ref_b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()

    out = VICRegLoss(**coeffs, weighting=weighting)(ours_a, ours_b)
    ref_loss, ref_inv, ref_var, ref_cov = naive_vicreg(ref_a, ref_b, weighting=weighting, **coeffs)
    out.loss.backward()
    ref_loss.backward()

    for ours, ref in [(out.loss, ref_loss), (out.invariance, ref_inv), (out.variance, ref_var),
                      (out.covariance, ref_cov)]:
        assert ours.item() == pytest.approx(ref.item(), rel=1e-5)
    assert ref_var.item() > 0, "the test data must exercise the variance hinge"
    torch.testing.assert_close(ours_a.grad, ref_a.grad, rtol=1e-5, atol=1e-12)
    torch.testing.assert_close(ours_b.grad, ref_b.grad, rtol=1e-5, atol=1e-12)


def test_float32_matches_float64_reference():
    z_a, z_b = embeddings(64, 256, seed=3)
    ours = VICRegLoss()(z_a.float(), z_b.float()).loss
    ref = naive_vicreg(z_a, z_b, 25.0, 25.0, 1.0, 1e-4, "official")[0]
    assert ours.item() == pytest.approx(ref.item(), rel=1e-5)


def test_paper_weighting_doubles_the_variance_term():
    z_a, z_b = embeddings(8, 32, seed=5)
    official = VICRegLoss(weighting="official")(z_a, z_b)
    paper = VICRegLoss(weighting="paper")(z_a, z_b)
    assert paper.variance.item() == pytest.approx(2 * official.variance.item(), rel=1e-12)
    assert paper.loss.item() - official.loss.item() == pytest.approx(25.0 * official.variance.item(), rel=1e-9)


def test_total_is_the_weighted_sum_of_terms():
    z_a, z_b = embeddings(10, 20, seed=7)
    out = VICRegLoss(sim_coeff=3.0, std_coeff=5.0, cov_coeff=7.0)(z_a, z_b)
    expected = 3.0 * out.invariance + 5.0 * out.variance + 7.0 * out.covariance
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)


def test_known_values_on_a_hand_checked_batch():
    # Two samples, two dims: z = [[1, 0], [-1, 0]]. Var = (2, 0), unbiased; no off-diagonal cov.
    z = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=torch.float64)
    out = VICRegLoss(eps=1e-4)(z, z)
    assert out.invariance.item() == 0.0
    expected_v = (max(0.0, 1 - math.sqrt(2 + 1e-4)) + (1 - math.sqrt(1e-4))) / 2
    assert out.variance.item() == pytest.approx(expected_v, rel=1e-12)  # official: (v + v) / 2
    assert out.covariance.item() == pytest.approx(0.0, abs=1e-15)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_keeps_variance_and_covariance_finite(dtype):
    # Unnormalised 1024-d embeddings of magnitude ~100: an fp16 Gram or covariance overflows 65504.
    g = torch.Generator().manual_seed(0)
    z_a = (100 * torch.randn(64, 1024, generator=g)).to(dtype)
    z_b = (z_a.float() + torch.randn(64, 1024, generator=g)).to(dtype)
    centred = z_a - z_a.mean(dim=0)
    if dtype == torch.float16:
        assert not torch.isfinite(centred.T @ centred).all(), "the naive fp16 covariance must overflow here"
    with torch.autocast("cpu", dtype=dtype):
        out = VICRegLoss()(z_a, z_b)
    reference = VICRegLoss()(z_a.float(), z_b.float())
    assert torch.isfinite(out.loss)
    assert out.covariance.dtype == torch.float32
    assert out.loss.item() == pytest.approx(reference.loss.item(), rel=1e-5)


def test_batch_of_one_is_refused():
    with pytest.raises(ValueError, match="at least 2 samples"):
        VICRegLoss()(torch.randn(1, 8), torch.randn(1, 8))


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match=r"differ in shape: \(4, 8\) vs \(4, 9\)"):
        VICRegLoss()(torch.randn(4, 8), torch.randn(4, 9))
    with pytest.raises(ValueError, match="must be 2-D"):
        VICRegLoss()(torch.randn(4, 8, 2), torch.randn(4, 8, 2))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_embeddings_give_a_non_finite_loss(bad):
    # The loss does not check (a check would read the device every step): the module's watch does.
    z = torch.randn(4, 8)
    z[2, 3] = bad
    assert not torch.isfinite(VICRegLoss()(z, torch.randn(4, 8)).loss)


@pytest.mark.parametrize("kwargs,match", [
    ({"sim_coeff": -1.0}, "sim_coeff=-1.0"),
    ({"eps": 0.0}, "eps=0.0"),
    ({"weighting": "mine"}, "weighting='mine'"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VICRegLoss(**kwargs)
