"""The expander."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vicreg_lightning.errors import ConfigError
from vicreg_lightning.choices import parse_expander_spec
from vicreg_lightning.expander import build_expander


def test_expander_is_official():
    expander = build_expander(512, "1024-1024-256")
    linears = [m for m in expander if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(512, 1024), (1024, 1024), (1024, 256)]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in expander) == 2
    assert sum(isinstance(m, nn.ReLU) for m in expander) == 2
    assert linears[-1].bias is None and isinstance(expander[-1], nn.Linear)  # no BN/ReLU at the end
    assert expander(torch.randn(4, 512)).shape == (4, 256)


def test_single_layer_expander():
    expander = build_expander(64, "128")
    assert len(expander) == 1 and expander[0].bias is None


@pytest.mark.parametrize("spec", ["8192-abc", "", "8192--8192", "-1", "0-8"])
def test_bad_expander_spec(spec):
    with pytest.raises(ConfigError, match="model.expander"):
        parse_expander_spec(spec)


def test_an_expander_too_wide_for_this_machine_is_refused_before_it_is_allocated(monkeypatch):
    # 512 -> 65536 -> 65536: 4,329 M weights, about 48 GiB to train: more than a 24 GiB machine has.
    with pytest.raises(ConfigError, match=r"model.expander='65536-65536': its 4,329 M weights need 48.4 GiB"):
        build_expander(512, "65536-65536")
    monkeypatch.setattr("vicreg_lightning.expander.available_memory", lambda: 10 * 2**20)
    with pytest.raises(ConfigError, match=r"model.expander='1024-1024'.*\(0.0 GiB available\)"):
        build_expander(512, "1024-1024")
    monkeypatch.setattr("vicreg_lightning.expander.available_memory", lambda: None)
    assert build_expander(512, "1024-1024")[0].out_features == 1024
