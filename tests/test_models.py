"""Backbones and the expander."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from vicreg_lightning.errors import ConfigError
from vicreg_lightning.models import build_backbone, build_expander, parse_expander_spec, resnet_names


@pytest.mark.parametrize("name,dim", [("resnet10", 512), ("resnet18", 512), ("resnet50", 2048)])
def test_backbone_feature_dims(name, dim):
    net, feature_dim = build_backbone(name)
    assert feature_dim == dim
    assert net.eval()(torch.randn(2, 3, 64, 64)).shape == (2, dim)


def test_every_torchvision_resnet_is_offered():
    shipped = {n for n in torchvision.models.list_models(module=torchvision.models)
               if n.startswith(("resnet", "wide_resnet", "resnext"))}
    assert set(resnet_names()) == shipped | {"resnet10"}


def test_small_stem_keeps_resolution():
    standard, _ = build_backbone("resnet18", small_stem=False)
    small, _ = build_backbone("resnet18", small_stem=True)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    # 32 px: the small stem enters layer1 at 32x32, the ImageNet stem at 8x8.
    assert small.layer1(small.relu(small.bn1(small.conv1(x)))).shape[-1] == 32
    assert standard.layer1(standard.maxpool(standard.relu(standard.bn1(standard.conv1(x))))).shape[-1] == 8


def test_zero_init_residual_as_official():
    net, _ = build_backbone("resnet50", zero_init_residual=True)
    assert torch.count_nonzero(net.layer1[0].bn3.weight) == 0
    net, _ = build_backbone("resnet50", zero_init_residual=False)
    assert torch.count_nonzero(net.layer1[0].bn3.weight) > 0


def test_backbone_weights_load_into_torchvision():
    net, _ = build_backbone("resnet18")
    reference = torchvision.models.resnet18()
    reference.fc = nn.Identity()
    reference.load_state_dict(net.state_dict(), strict=True)


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


def test_unknown_backbone():
    with pytest.raises(ConfigError, match="resnet999.*resnet18"):
        build_backbone("resnet999")


def test_an_expander_too_wide_for_this_machine_is_refused_before_it_is_allocated(monkeypatch):
    # 512 -> 65536 -> 65536: 4,329 M weights, about 48 GiB to train: more than a 24 GiB machine has.
    with pytest.raises(ConfigError, match=r"model.expander='65536-65536': its 4,329 M weights need 48.4 GiB"):
        build_expander(512, "65536-65536")
    monkeypatch.setattr("vicreg_lightning.models.available_memory", lambda: 10 * 2**20)
    with pytest.raises(ConfigError, match=r"model.expander='1024-1024'.*\(0.0 GiB available\)"):
        build_expander(512, "1024-1024")
    monkeypatch.setattr("vicreg_lightning.models.available_memory", lambda: None)
    assert build_expander(512, "1024-1024")[0].out_features == 1024
