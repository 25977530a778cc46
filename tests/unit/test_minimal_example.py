"""examples/minimal_vicreg.py, the method in plain PyTorch, runs: a few steps of its own loop, and
on one fixed batch its updates lower the VICReg loss."""

from __future__ import annotations

import math
import runpy
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "minimal_vicreg.py"


def test_the_example_trains_for_the_steps_it_is_given(capsys):
    example = runpy.run_path(str(EXAMPLE))  # as a module: its command line does not run
    losses = example["main"](steps=3, batch_size=32)
    assert len(losses) == 3 and all(math.isfinite(loss) for loss in losses)
    # At initialisation the expander's embeddings have a std far from 1 and correlated dimensions: the
    # weighted variance and covariance terms alone put the loss well above the invariance term's scale.
    assert losses[0] > 1.0
    assert "step    2" in capsys.readouterr().out


def test_on_a_fixed_batch_each_update_lowers_the_loss():
    example = runpy.run_path(str(EXAMPLE))
    torch.manual_seed(0)
    encoder, criterion, optimizer = example["build"](batch_size=16)
    images = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    x_a, x_b = example["two_views"](images)
    assert x_a.shape == x_b.shape == (16, 3, 32, 32) and not torch.equal(x_a, x_b)
    losses = [example["train_step"](encoder, criterion, optimizer, x_a, x_b) for _ in range(3)]
    assert losses[0] > losses[1] > losses[2], losses
    with torch.no_grad():  # the embeddings the loss reads: the expander's last width
        assert encoder(x_a).shape == (16, 2048)
