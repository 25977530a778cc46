"""The report's measurements on planted data: the invariance score's definition and its extremes,
the Fréchet distance against the textbook formula, the group-distance flag, and report.md's tables."""

from __future__ import annotations

import re

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from vicreg_lightning.config import preset
from vicreg_lightning.data.datasets import TensorImages
from vicreg_lightning.metrics.groups import frechet_distance
from vicreg_lightning.metrics.invariance import invariance
from vicreg_lightning.report import (
    group_stability,
    measure_invariance,
)
from vicreg_lightning.report.document import Document


def _noise_images(count: int = 64, size: int = 16) -> TensorImages:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    return TensorImages(images, torch.zeros(count, dtype=torch.long))


def test_invariance_is_one_for_an_encoder_that_ignores_the_transform_and_zero_for_raw_pixels() -> None:
    aug = OmegaConf.create({**preset("augment", "official"), "size": 16, "val_resize": 16})
    # Global average pooling of the image: a flip moves pixels, not their mean.
    pooled = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    # The raw pixels: a flipped noise image is as unrelated to its original as any other noise image.
    pixels = nn.Flatten()
    results = measure_invariance({"pooled": (pooled, None), "pixels": (pixels, None)}, _noise_images(), aug,
                                 families=("flip",))
    assert results["pooled"]["flip"].input_change > 0.5  # the transform did change the images
    assert results["pooled"]["flip"].scores["features"].score == pytest.approx(1.0, abs=1e-6)
    assert abs(results["pixels"]["flip"].scores["features"].score) < 0.05


def test_invariance_follows_its_definition() -> None:
    generator = torch.Generator().manual_seed(0)
    reference = torch.rand(50, 8, generator=generator)
    transformed = reference + 0.3 * torch.randn(50, 8, generator=generator)
    centred_ref = reference.double() - reference.double().mean(dim=0)
    centred_trans = transformed.double() - reference.double().mean(dim=0)
    cos = torch.nn.functional.cosine_similarity
    sim_same = cos(centred_ref, centred_trans, dim=1).mean()
    sim_unrelated = torch.stack([cos(centred_ref[i], centred_ref[j], dim=0)
                                 for i in range(50) for j in range(50) if i != j]).mean()
    measured = invariance(reference, transformed)
    assert measured.sim_same == pytest.approx(float(sim_same), abs=1e-12)
    assert measured.sim_unrelated == pytest.approx(float(sim_unrelated), abs=1e-12)
    assert measured.score == pytest.approx(float((sim_same - sim_unrelated) / (1 - sim_unrelated)), abs=1e-12)
    # Scaling about the mean leaves the direction: invariant. Another image in place of the original:
    # exactly as close as an unrelated image, with two images.
    mean = reference.mean(dim=0)
    assert invariance(reference, mean + 2 * (reference - mean)).score == pytest.approx(1.0, abs=1e-12)
    assert invariance(reference[:2], reference[[1, 0]]).score == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("samples", [5, 80], ids=["fewer samples than dims", "more samples than dims"])
def test_frechet_distance_matches_the_textbook_formula(samples: int) -> None:
    from scipy import linalg

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(samples, 16, generator=generator, dtype=torch.float64)
    y = 1.5 * torch.randn(samples + 7, 16, generator=generator, dtype=torch.float64) + 0.5
    cov_x, cov_y = torch.cov(x.T).numpy(), torch.cov(y.T).numpy()
    root = linalg.sqrtm(linalg.sqrtm(cov_x) @ cov_y @ linalg.sqrtm(cov_x)).real
    expected = float((x.mean(0) - y.mean(0)).square().sum()) + cov_x.trace() + cov_y.trace() - 2 * root.trace()
    assert frechet_distance(x, y) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_group_distance_flags_the_group_shifted_on_purpose() -> None:
    generator = torch.Generator().manual_seed(0)
    groups, per_group, dim, shifted = 8, 40, 32, 5
    features = torch.randn(groups * per_group, dim, generator=generator)
    group_index = torch.arange(groups).repeat_interleave(per_group)
    features[group_index == shifted] += 1.5
    rows = group_stability(features, None, group_index, [f"g{g}" for g in range(groups)],
                           knn_correct=torch.ones(len(features), dtype=torch.bool))
    assert [row.flagged for row in rows] == [g == shifted for g in range(groups)]
    assert max(rows, key=lambda row: row.distance).name == f"g{shifted}"
    # Without the shift, nothing stands apart.
    features[group_index == shifted] -= 1.5
    rows = group_stability(features, None, group_index, [f"g{g}" for g in range(groups)],
                           knn_correct=torch.ones(len(features), dtype=torch.bool))
    assert not any(row.flagged for row in rows)


def test_a_bar_in_a_group_name_stays_inside_its_table_cell():
    doc = Document("report")
    doc.table(["group", "images"], [["site|A", "12"], ["site B", "7"]])
    rows = [line for line in doc.markdown().splitlines() if line.startswith("|")]
    # Markdown splits cells at every "|" not escaped: 2 columns, whatever the names hold.
    assert [len(re.split(r"(?<!\\)\|", row)) - 2 for row in rows] == [2, 2, 2, 2]
    assert rows[2] == "| site\\|A | 12 |"
