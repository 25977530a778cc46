"""LARS, its exclusions, and the learning-rate schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vicreg_lightning.config import preset
from vicreg_lightning.optim import LARS, build_optimizer, encoder_param_groups, scaled_lr, warmup_cosine


def optimizer(encoder: nn.Module, probe: nn.Module, *changes: str) -> torch.optim.Optimizer:
    """conf/optim/lars.yaml with ``changes`` at lr = base_lr (a global batch of 256), without warmup."""
    settings = preset("optim", "lars", "warmup_epochs=0", *changes)
    del settings["clip_grad_norm"]  # VICRegModule's, not the optimiser's
    return build_optimizer(encoder, probe, global_batch_size=256, total_steps=100, steps_per_epoch=10, **settings)[0]


def test_lars_step_matches_hand_computation():
    weight = nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ‖w‖ = 5
    bias = nn.Parameter(torch.tensor([1.0]))
    weight.grad = torch.tensor([[0.6, 0.8]])  # ‖g‖ = 1
    bias.grad = torch.tensor([0.5])
    groups = encoder_param_groups(nn.ParameterList([weight, bias]), weight_decay=0.1, exclude_bias_and_norm=True)
    opt = LARS(groups, lr=0.1, momentum=0.9, eta=1e-3)
    opt.step()
    dp = torch.tensor([[0.6, 0.8]]) + 0.1 * torch.tensor([[3.0, 4.0]])
    trust = 1e-3 * 5.0 / dp.norm()
    torch.testing.assert_close(weight.detach(), torch.tensor([[3.0, 4.0]]) - 0.1 * trust * dp)
    # The bias (1-D) gets neither weight decay nor the trust ratio: a plain momentum-SGD step.
    torch.testing.assert_close(bias.detach(), torch.tensor([1.0 - 0.1 * 0.5]))


def test_bias_and_norm_parameters_are_excluded():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2, bias=False))
    regular, exempt = encoder_param_groups(model, weight_decay=1e-6, exclude_bias_and_norm=True)
    assert {p.ndim for p in regular["params"]} == {2}
    assert len(exempt["params"]) == 3 and all(p.ndim == 1 for p in exempt["params"])
    assert exempt["weight_decay"] == 0.0 and exempt["lars_adaptation"] is False
    assert regular["weight_decay"] == 1e-6 and regular["lars_adaptation"] is True


def test_probe_has_its_own_group_without_adaptation():
    encoder, probe = nn.Linear(4, 8), nn.Linear(8, 3)
    opt = optimizer(encoder, probe, "base_lr=0.4", "probe_lr=0.1", "weight_decay=1e-6")
    probe_group = opt.param_groups[-1]
    assert probe_group["lr"] == 0.1 and probe_group["lars_adaptation"] is False
    assert probe_group["weight_decay"] == 0.0
    assert {id(p) for p in probe_group["params"]} == {id(p) for p in probe.parameters()}
    assert all(g["lr"] == 0.4 for g in opt.param_groups[:-1])


def test_probe_does_not_change_the_encoder_update():
    torch.manual_seed(0)
    encoder = nn.Linear(4, 8)
    grads = [torch.randn_like(p) for p in encoder.parameters()]

    def step(with_probe_grad: bool) -> list[torch.Tensor]:
        enc = nn.Linear(4, 8)
        enc.load_state_dict(encoder.state_dict())
        probe = nn.Linear(8, 3)
        for p, g in zip(enc.parameters(), grads, strict=True):
            p.grad = g.clone()
        if with_probe_grad:
            for p in probe.parameters():
                p.grad = 100 * torch.ones_like(p)
        opt = optimizer(enc, probe, "base_lr=0.4", "probe_lr=0.1", "weight_decay=1e-6")
        opt.step()  # held: the schedule tracks opt.step through a weak reference
        return [p.detach().clone() for p in enc.parameters()]

    for a, b in zip(step(False), step(True), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_other_optimizers(name, cls):
    opt = optimizer(nn.Linear(4, 8), nn.Linear(8, 3), f"name={name}", "weight_decay=0.05")
    assert isinstance(opt, cls)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.05, 0.0, 0.0]


def test_unknown_optimizer():
    settings = {**preset("optim", "lars"), "name": "adam"}
    del settings["clip_grad_norm"]
    with pytest.raises(ValueError, match="optim.name='adam'"):
        build_optimizer(nn.Linear(2, 2), nn.Linear(2, 2), global_batch_size=256, total_steps=10, steps_per_epoch=1,
                        **settings)


def test_warmup_cosine_values():
    total, warmup, end = 1000, 100, 0.001
    assert warmup_cosine(0, total, warmup, end) == 0.0
    assert warmup_cosine(50, total, warmup, end) == pytest.approx(0.5)
    assert warmup_cosine(100, total, warmup, end) == pytest.approx(1.0)
    # Half-way through the decay: q = 0.5, so 0.5 + 0.5 * end.
    assert warmup_cosine(550, total, warmup, end) == pytest.approx(0.5 + 0.5 * end)
    assert warmup_cosine(1000, total, warmup, end) == pytest.approx(end)
    q = 0.5 * (1 + math.cos(math.pi * 0.25))
    assert warmup_cosine(325, total, warmup, end) == pytest.approx(q + end * (1 - q))


def test_linear_scaling_rule():
    assert scaled_lr(0.2, 2048) == pytest.approx(1.6)
    assert scaled_lr(0.3, 256) == pytest.approx(0.3)
