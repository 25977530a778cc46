"""A diverged run stops with one line naming the first non-finite step and its terms."""

from __future__ import annotations

import pytest
import torch

from vicreg_lightning.divergence import DivergenceWatch
from vicreg_lightning.errors import NonFiniteEmbeddingError


def test_the_watch_names_the_first_non_finite_step_and_its_terms():
    watch, ok = DivergenceWatch(), torch.tensor(1.0)
    for step in range(3):
        watch.update(step, ok, ok, ok)
    watch.check(2)
    watch.update(3, ok, torch.tensor(float("nan")), ok)
    watch.update(4, ok, ok, ok)
    watch.update(5, ok, ok, torch.tensor(float("inf")))
    assert watch.has_diverged()
    with pytest.raises(NonFiniteEmbeddingError, match=r"at step 3 \(variance and covariance; checked steps 3-5\)"):
        watch.check(5)
