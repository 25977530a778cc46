"""Backbones of every kind: torchvision ResNets, timm models, a user's own through _target_; their
initial weights, weight-decay exclusions and memory format."""

from __future__ import annotations

import pytest
import timm
import torch
import torchvision
from torch import nn

from vicreg_lightning.backbones import build_backbone, build_resnet, is_convnet, load_init_weights, resnet_names
from vicreg_lightning.config import check_sections, preset
from vicreg_lightning.errors import ConfigError
from vicreg_lightning.optim import encoder_param_groups

# A small ViT of timm's: 2 blocks of width 192, 8-px patches of 32-px images.
TINY_VIT = {"backbone": "timm:vit_tiny_patch16_224", "backbone_kwargs": {"patch_size": 8, "depth": 2}, "pool": "auto"}


def model(**keys) -> dict:
    """The digits model preset with ``keys`` replaced."""
    return {**preset("model", "digits"), **keys}


def small_cnn(width: int = 16) -> nn.Module:
    """A user's own encoder (``model.backbone._target_=tests.unit.test_backbones.small_cnn``)."""
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def not_a_module() -> str:
    return "an encoder"


def unpooled() -> nn.Module:
    return nn.Conv2d(3, 4, 3)


# ---------------------------------------------------------------------------------------------- ResNets


@pytest.mark.parametrize("name,dim", [("resnet10", 512), ("resnet18", 512), ("resnet50", 2048)])
def test_resnet_feature_dims(name, dim):
    built = build_backbone(model(backbone=name, small_stem=False), 64)
    assert (built.feature_dim, built.arch, built.timm) == (dim, name, None)
    assert built.module.eval()(torch.randn(2, 3, 64, 64)).shape == (2, dim)


def test_every_torchvision_resnet_is_offered():
    shipped = {n for n in torchvision.models.list_models(module=torchvision.models)
               if n.startswith(("resnet", "wide_resnet", "resnext"))}
    assert set(resnet_names()) == shipped | {"resnet10"}


def test_small_stem_keeps_resolution():
    standard, small = build_resnet("resnet18", small_stem=False), build_resnet("resnet18", small_stem=True)
    assert small.conv1.kernel_size == (3, 3) and small.conv1.stride == (1, 1)
    assert isinstance(small.maxpool, nn.Identity)
    x = torch.randn(2, 3, 32, 32)
    # 32 px: the small stem enters layer1 at 32x32, the ImageNet stem at 8x8.
    assert small.layer1(small.relu(small.bn1(small.conv1(x)))).shape[-1] == 32
    assert standard.layer1(standard.maxpool(standard.relu(standard.bn1(standard.conv1(x))))).shape[-1] == 8
    # small_stem null: chosen from the crop size.
    assert build_backbone(model(backbone="resnet18", small_stem=None), 32).module.conv1.kernel_size == (3, 3)
    assert build_backbone(model(backbone="resnet18", small_stem=None), 96).module.conv1.kernel_size == (7, 7)


def test_zero_init_residual_as_official():
    assert torch.count_nonzero(build_resnet("resnet50", zero_init_residual=True).layer1[0].bn3.weight) == 0
    assert torch.count_nonzero(build_resnet("resnet50", zero_init_residual=False).layer1[0].bn3.weight) > 0


def test_resnet_weights_load_into_torchvision():
    reference = torchvision.models.resnet18()
    reference.fc = nn.Identity()
    reference.load_state_dict(build_resnet("resnet18").state_dict(), strict=True)


# ---------------------------------------------------------------------------------------------- timm


def test_a_timm_vit_is_timms_model_built_for_the_crop_size():
    built = build_backbone(TINY_VIT, 32)
    assert built.arch == "timm:vit_tiny_patch16_224" and built.feature_dim == 192
    assert built.timm == {"model_name": "vit_tiny_patch16_224",
                          "kwargs": {"img_size": 32, "num_classes": 0, "patch_size": 8, "depth": 2}}
    # The recorded call builds the same architecture: the weights load strictly, the features agree.
    reference = timm.create_model(built.timm["model_name"], **built.timm["kwargs"])
    reference.load_state_dict(built.module.state_dict(), strict=True)
    images = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(reference.eval()(images), built.module.eval()(images))
    assert len(built.module.blocks) == 2 and built.module.patch_embed.num_patches == 16


def test_pool_chooses_the_class_token_or_the_mean_of_the_patch_tokens():
    torch.manual_seed(0)
    cls = build_backbone({**TINY_VIT, "pool": "cls"}, 32).module.eval()
    torch.manual_seed(0)
    avg = build_backbone({**TINY_VIT, "pool": "avg"}, 32).module.eval()
    assert (cls.global_pool, avg.global_pool) == ("token", "avg")
    images = torch.randn(2, 3, 32, 32)
    tokens = avg.forward_features(images)  # the same weights in both (same seed): only the pooling differs
    torch.testing.assert_close(avg(images), avg.fc_norm(tokens[:, avg.num_prefix_tokens:].mean(dim=1)))
    torch.testing.assert_close(cls(images), cls.forward_features(images)[:, 0])


def test_a_timm_convnet_takes_any_size_and_its_own_kwargs():
    built = build_backbone({"backbone": "timm:convnext_atto", "backbone_kwargs": {"patch_size": 2}, "pool": "auto"}, 32)
    assert built.feature_dim == 320 and "img_size" not in built.timm["kwargs"]
    assert built.module.stem[0].stride == (2, 2)
    assert built.module.eval()(torch.randn(2, 3, 48, 48)).shape == (2, 320)
    assert is_convnet(built.module) and not is_convnet(build_backbone(TINY_VIT, 32).module)


def test_local_crops_build_a_vit_that_takes_both_sizes():
    vit = build_backbone(TINY_VIT, 32, any_image_size=True)
    assert vit.timm["kwargs"]["dynamic_img_size"] is True
    assert vit.module.eval()(torch.randn(2, 3, 16, 16)).shape == (2, 192)


# ---------------------------------------------------------------------------------------------- _target_


def test_a_target_encoder_gets_its_arguments_and_its_width_is_measured():
    spec = {"_target_": "tests.unit.test_backbones.small_cnn", "width": 12}
    built = build_backbone({"backbone": spec, "backbone_kwargs": {}, "pool": "auto"}, 16)
    assert (built.arch, built.feature_dim) == ("tests.unit.test_backbones.small_cnn", 12)
    # backbone_kwargs are arguments too, over the entry's own.
    assert build_backbone({"backbone": spec, "backbone_kwargs": {"width": 5}, "pool": "auto"}, 16).feature_dim == 5
    assert built.module.training  # measuring the width leaves the module as it was


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("backbone,kwargs,pool,message", [
    ("timm:vit_tiny_patch16_22", {}, "auto",
     r"^model.backbone=timm:vit_tiny_patch16_22: timm has no such model; did you mean vit_tiny_patch16_224"),
    ("timm:vit_tiny_patch16_224", {"depht": 2}, "auto",
     r"^model.backbone=timm:vit_tiny_patch16_224: timm cannot build it with model.backbone_kwargs=\{'depht': 2\} "
     r"\(TypeError: .*'depht'"),
    ("timm:convnext_atto", {}, "cls", r"^model.backbone=timm:convnext_atto: timm cannot build it with model.pool=cls "
                                      r"\(a class token; use auto or avg\) \(AssertionError: Invalid pool type: token\)"),
    ("resnet18", {"depth": 2}, "auto", r"^model.backbone=resnet18: a torchvision ResNet takes no model.backbone_kwargs"),
    ({"_target_": "tests.no_such_module.encoder"}, {}, "auto",
     r"^model.backbone._target_=tests.no_such_module.encoder: cannot build it \(Error locating target"),
    ({"_target_": "tests.unit.test_backbones.not_a_module"}, {}, "auto",
     r"^model.backbone._target_=tests.unit.test_backbones.not_a_module: returned a str, not a torch.nn.Module"),
    ({"_target_": "tests.unit.test_backbones.unpooled"}, {}, "auto",
     r"^model.backbone=tests.unit.test_backbones.unpooled: its output for 2 images is \(2, 4, 30, 30\), not \(N, F\)"),
    ({"_target_": "tests.unit.test_backbones.small_cnn"}, {}, "avg", r"^model.pool=avg: a _target_ backbone pools its own"),
    ("vgg16", {}, "auto", r"^model.backbone='vgg16': expected a torchvision ResNet \(.*resnet18.*\), timm:<model name>"),
])
def test_a_backbone_that_cannot_be_built_is_one_line_naming_it(backbone, kwargs, pool, message):
    with pytest.raises(ConfigError, match=message):
        build_backbone({"backbone": backbone, "backbone_kwargs": kwargs, "pool": pool}, 32)


def test_local_crops_larger_than_the_views_are_refused():
    augment = preset("augment", "digits", "num_local_crops=2")
    assert check_sections(augment=augment)[0].local_size == 16
    with pytest.raises(ConfigError, match=r"^augment.local_size=48: expected a crop size in pixels, at most augment.size"):
        check_sections(augment={**augment, "local_size": 48})
    check_sections(augment={**augment, "local_size": 48, "num_local_crops": 0})  # no local crop: not used


# ---------------------------------------------------------------------------------------------- init_weights


def test_init_weights_load_timms_weights_without_its_classifier(tmp_path):
    torch.manual_seed(1)
    pretrained = timm.create_model("vit_tiny_patch16_224", img_size=32, patch_size=8, depth=2, num_classes=10)
    torch.save(pretrained.state_dict(), tmp_path / "vit.pt")
    backbone = build_backbone(TINY_VIT, 32).module
    assert not torch.equal(backbone.pos_embed, pretrained.pos_embed)
    load_init_weights(backbone, str(tmp_path / "vit.pt"), "timm:vit_tiny_patch16_224")
    assert all(torch.equal(t, pretrained.state_dict()[name]) for name, t in backbone.state_dict().items())
    # torchvision's ResNet weights, fc included, into a ResNet.
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pt")
    load_init_weights(build_resnet("resnet18"), str(tmp_path / "resnet18.pt"), "resnet18")


def test_init_weights_take_a_training_checkpoints_backbone(tmp_path):
    # What a user passes most: <run dir>/checkpoints/last.ckpt, a Lightning checkpoint.
    trained = build_resnet("resnet18")
    with torch.no_grad():
        for t in trained.state_dict().values():
            t.add_(1) if t.is_floating_point() else None
    head = {"expander.0.weight": torch.zeros(4, 512), "probe.weight": torch.zeros(10, 512)}
    torch.save({"state_dict": {**{f"backbone.{k}": v for k, v in trained.state_dict().items()}, **head},
                "epoch": 3}, tmp_path / "last.ckpt")
    backbone = build_resnet("resnet18")
    load_init_weights(backbone, str(tmp_path / "last.ckpt"), "resnet18")
    assert all(torch.equal(t, trained.state_dict()[name]) for name, t in backbone.state_dict().items())


def test_init_weights_of_another_architecture_are_refused_naming_a_difference(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pt")
    with pytest.raises(ConfigError, match=r"^model.init_weights='.*resnet18.pt': not weights of "
                                          r"timm:vit_tiny_patch16_224 as configured \(.* and \d+ more\)"):
        load_init_weights(build_backbone(TINY_VIT, 32).module, str(tmp_path / "resnet18.pt"), "timm:vit_tiny_patch16_224")
    with pytest.raises(ConfigError, match=r"^model.init_weights='/no/such.pt': no such file"):
        load_init_weights(build_resnet("resnet18"), "/no/such.pt", "resnet18")


# ---------------------------------------------------------------------------------------------- optimiser


def test_a_vits_position_embedding_and_class_token_are_exempt_from_weight_decay():
    vit = build_backbone(TINY_VIT, 32).module
    encoder = nn.ModuleList([vit, nn.Linear(192, 8)])
    regular, exempt = encoder_param_groups(encoder, weight_decay=0.05, exclude_bias_and_norm=True)
    exempt_ids = {id(p) for p in exempt["params"]}
    assert id(vit.pos_embed) in exempt_ids and id(vit.cls_token) in exempt_ids
    assert id(vit.blocks[0].norm1.weight) in exempt_ids and id(vit.blocks[0].attn.qkv.bias) in exempt_ids
    assert id(vit.blocks[0].attn.qkv.weight) in {id(p) for p in regular["params"]}
    assert (regular["weight_decay"], exempt["weight_decay"]) == (0.05, 0.0)
    # Without the exclusions, nothing is exempt (the negative control).
    assert len(encoder_param_groups(encoder, 0.05, exclude_bias_and_norm=False)) == 1
