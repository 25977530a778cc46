"""Micro-batching (data.micro_batch_size): the step on cached backbone features against the
one-pass step (encoders without batch statistics), against a reference that applies BatchNorm per
micro-batch (ResNets), with drop-path replayed, and through real training runs."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.runs import ONE_DEVICE, TINY_RUN, TINY_VIT, compose_train, weights
from vicreg_lightning import micro_batch
from vicreg_lightning.config import preset
from vicreg_lightning.errors import ConfigError
from vicreg_lightning.module import VICRegModule
from vicreg_lightning.train import run

BATCH, CLASSES = 16, 10


def layernorm_mlp() -> nn.Module:
    """An encoder without batch statistics (``model.backbone._target_``)."""
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 48), nn.LayerNorm(48), nn.GELU(), nn.Linear(48, 32))


def module(backbone, micro_batch_size=None, views_forward="auto", local_crop_size=None, **model) -> VICRegModule:
    torch.manual_seed(0)
    keys = {**preset("model", "digits"), "backbone": backbone, "expander": "64-48", "views_forward": views_forward,
            "channels_last": False, **model}
    return VICRegModule(model=keys, loss=preset("loss", "vicreg"), optim=preset("optim", "lars"),
                        num_classes=CLASSES, batch_size=BATCH, image_size=16,
                        local_crop_size=local_crop_size, micro_batch_size=micro_batch_size).double().train()


def batch(local_crops: int = 0, seed: int = 1) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    views = [torch.randn(BATCH, 3, 16, 16, generator=g, dtype=torch.float64) for _ in range(2)]
    views += [torch.randn(BATCH, 3, 8, 8, generator=g, dtype=torch.float64) for _ in range(local_crops)]
    return tuple(views), torch.randint(0, CLASSES, (BATCH,), generator=g)


def step(m: VICRegModule, views, labels, seed: int = 2) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss of one training step and the gradient it gives every parameter."""
    m.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    loss, _ = m.step_loss(views, labels)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in m.named_parameters()}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-30))


def assert_same_step(one, micro, rtol=1e-6):
    """Loss and every gradient within ``rtol`` of the reference's, relative to the gradient's
    largest entry (or to a millionth of the largest of all gradients: a bias before BatchNorm has a
    gradient of 0 in exact arithmetic, and rounding noise relative to it is meaningless)."""
    (loss_one, grads_one), (loss_micro, grads_micro) = one, micro
    assert relative(loss_micro, loss_one) <= rtol
    assert grads_micro.keys() == grads_one.keys()
    floor = 1e-6 * max(float(g.abs().max()) for g in grads_one.values())
    errors = {name: float((grads_micro[name] - g).abs().max()) / max(float(g.abs().max()), floor)
              for name, g in grads_one.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= rtol, (worst, errors[worst])


def one_graph_per_quarter(m: VICRegModule) -> VICRegModule:
    """``m`` encoding each quarter of the batch in turn, in one pass and one graph: what
    micro-batching must give, written without caching or replay."""
    quarters = [slice(i, i + BATCH // 4) for i in range(0, BATCH, BATCH // 4)]
    m.micro_batch_size = None
    m.encode = lambda inputs: tuple(torch.cat(parts) for parts in zip(
        *(VICRegModule.encode(m, tuple(x[q] for x in inputs)) for q in quarters)))
    return m


TINY_TIMM_VIT = {"backbone": "timm:vit_tiny_patch16_224", "pool": "auto",
                 "backbone_kwargs": {"patch_size": 4, "depth": 2, "embed_dim": 48, "num_heads": 3}}


@pytest.mark.parametrize("encoder,local_crops", [
    ({"backbone": {"_target_": "tests.integration.test_micro_batch.layernorm_mlp"}}, 0),
    ({"backbone": {"_target_": "tests.integration.test_micro_batch.layernorm_mlp"}, "compile": True}, 0),
    (TINY_TIMM_VIT, 0),
    (TINY_TIMM_VIT, 2),
], ids=["layernorm-mlp", "layernorm-mlp-compiled", "vit", "vit-local-crops"])
def test_without_batch_statistics_a_quarter_batch_micro_batch_gives_the_one_pass_step(encoder, local_crops):
    one = module(**{"backbone_kwargs": {}, **encoder}, local_crop_size=8 if local_crops else None)
    micro = copy.deepcopy(one)
    micro.micro_batch_size = BATCH // 4
    views, labels = batch(local_crops)
    assert_same_step(step(one, views, labels), step(micro, views, labels))


def test_drop_path_is_replayed_in_the_second_pass(monkeypatch):
    """With drop-path, the step equals the whole batch encoded micro-batch by micro-batch with one
    graph (the masks pass 1 drew); a second pass that drew new masks would not."""
    kwargs = {**TINY_TIMM_VIT["backbone_kwargs"], "drop_path_rate": 0.5}
    micro = module(TINY_TIMM_VIT["backbone"], backbone_kwargs=kwargs, micro_batch_size=BATCH // 4)
    reference = one_graph_per_quarter(copy.deepcopy(micro))
    views, labels = batch()
    expected = step(reference, views, labels)
    assert_same_step(expected, step(micro, views, labels))

    monkeypatch.setattr(micro_batch, "_set_random_state", lambda state, device: None)
    loss, grads = step(micro, views, labels)
    assert relative(grads["backbone.blocks.0.mlp.fc1.weight"], expected[1]["backbone.blocks.0.mlp.fc1.weight"]) > 1e-3


def test_a_resnet_step_is_ghost_batchnorm_per_micro_batch_with_its_running_statistics():
    """BatchNorm in the backbone sees one micro-batch at a time: the step equals a reference that
    encodes each micro-batch of each view in turn with one graph, and the running statistics after
    the step equal the reference's (each sample counted once)."""
    micro = module("resnet10", micro_batch_size=BATCH // 4, small_stem=True)
    reference = one_graph_per_quarter(copy.deepcopy(micro))
    views, labels = batch()
    assert_same_step(step(reference, views, labels), step(micro, views, labels))
    running = {name: b for name, b in micro.backbone.named_buffers()}
    for name, expected in reference.backbone.named_buffers():
        torch.testing.assert_close(running[name], expected, rtol=1e-12, atol=1e-12, msg=name)
    # The negative control: one pass over each view's whole batch normalises differently.
    whole = module("resnet10", small_stem=True)
    assert relative(step(whole, views, labels)[0], step(micro, views, labels)[0]) > 1e-4


def test_a_micro_batch_that_does_not_divide_the_batch_is_refused_before_training(tmp_path):
    with pytest.raises(ConfigError, match=r"data.micro_batch_size=5: must divide the per-device batch of 32"):
        run(compose_train(*TINY_RUN, *ONE_DEVICE, "data.micro_batch_size=5", f"paths.output_dir={tmp_path}"))
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(ConfigError, match="data.micro_batch_size=0: expected null"):
        run(compose_train(*TINY_RUN, "data.micro_batch_size=0", f"paths.output_dir={tmp_path}"))
    m = module({"_target_": "tests.integration.test_micro_batch.layernorm_mlp"}, micro_batch_size=5)
    with pytest.raises(ConfigError, match="data.micro_batch_size=5"):
        m.step_loss(*batch())


def test_three_training_steps_with_micro_batches_end_with_the_one_pass_weights(tmp_path):
    """A real Trainer, a timm ViT, float32: 3 optimiser steps with micro-batches of a quarter of the
    batch against 3 one-pass steps."""
    common = (*TINY_RUN, "trainer.limit_train_batches=3", *TINY_VIT, *ONE_DEVICE,
              "callbacks.representation_health=null", "trainer.limit_val_batches=1")
    runs = {}
    for name, micro in (("one_pass", "null"), ("micro", "8")):
        metrics = run(compose_train(*common, f"data.micro_batch_size={micro}",
                                    f"paths.output_dir={tmp_path / name}"))
        assert metrics["step"] == 3
        runs[name] = weights(tmp_path / name)
    difference = max(float((runs["micro"][k] - v).abs().max()) for k, v in runs["one_pass"].items()
                     if v.is_floating_point())
    print(f"3 steps, micro-batches of 8 vs one pass of 32: max weight difference {difference:.2e}")
    assert difference < TOLERANCE_3_STEPS, difference


# float32: the micro-batched step sums each parameter's gradient over 4 micro-batches, in another
# order than one pass; 3 steps of the smoke preset's LARS keep that within this bound.
TOLERANCE_3_STEPS = 1e-5
