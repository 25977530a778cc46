"""The speed options compute what the default path computes: channels_last, bf16 autocast,
torch.compile and one-pass views give the same loss (and gradients) within their tolerance."""

from __future__ import annotations

import torch
from torch import nn

from vicreg_lightning.config import preset
from vicreg_lightning.module import VICRegModule, resolve_views_forward
from vicreg_lightning.train import resolve_precision

OPTIM = preset("optim", "lars", "warmup_epochs=0")
LOSS = {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0}


def module(**speed) -> VICRegModule:
    torch.manual_seed(0)
    model = {**preset("model", "digits"), "zero_init_residual": False, "expander": "64-64", "channels_last": False,
             "views_forward": "separate", **speed}
    return VICRegModule(model, LOSS, OPTIM, num_classes=10, batch_size=16, image_size=32)


def views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(16, 3, 32, 32, generator=g), torch.randn(16, 3, 32, 32, generator=g)


def loss_and_grads(m: VICRegModule, autocast: bool = False) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x_a, x_b = views()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        z_a, z_b = m.expand(m.encode((x_a, x_b)))
        loss = m.criterion(z_a, z_b).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.backbone.named_parameters()}


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_channels_last_gives_the_same_loss_and_gradients():
    loss, grads = loss_and_grads(module())
    fast = module(channels_last=True)
    fast_loss, fast_grads = loss_and_grads(fast)
    assert fast.backbone.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(fast_loss, loss, rtol=1e-5, atol=1e-5)
    assert max(relative(fast_grads[n], grads[n]) for n in grads) < 1e-4


def test_bf16_autocast_gives_the_same_loss_within_bf16_precision():
    loss, grads = loss_and_grads(module())
    bf16_loss, bf16_grads = loss_and_grads(module(), autocast=True)
    assert bf16_loss.dtype == torch.float32  # var/cov stay float32 inside the loss
    assert abs(bf16_loss.item() - loss.item()) / loss.item() < 2e-2
    # bf16 keeps 8 bits of mantissa through ten layers: the first layer's gradient keeps its direction.
    cosine = torch.nn.functional.cosine_similarity(bf16_grads["conv1.weight"].flatten(), grads["conv1.weight"].flatten(), dim=0)
    assert cosine > 0.9


def test_compiled_backbone_gives_the_same_loss_and_keeps_parameter_names():
    eager = module()
    compiled = module(compile=True)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # checkpoints and exports unchanged
    loss, grads = loss_and_grads(eager)
    compiled_loss, compiled_grads = loss_and_grads(compiled)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-4, atol=1e-4)
    assert max(relative(compiled_grads[n], grads[n]) for n in grads) < 1e-3


def test_views_forward_auto_keeps_per_view_batchnorm_and_concat_is_exact_without_batch_statistics():
    assert module(views_forward="auto").views_forward == "separate"  # ResNets have BatchNorm
    separate, concat = module(), module(views_forward="concat")
    two_views = views()

    def features_and_embeddings(m: VICRegModule) -> tuple[torch.Tensor, ...]:
        features = m.encode(two_views)
        return (*features, *m.expand(features))

    # With BatchNorm on fixed statistics, one pass and two are the same computation.
    separate.eval(), concat.eval()
    for a, b in zip(features_and_embeddings(separate), features_and_embeddings(concat), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    # In training mode the one pass normalises both views together: another computation.
    separate.train(), concat.train()
    assert not torch.allclose(features_and_embeddings(separate)[2], features_and_embeddings(concat)[2], atol=1e-3)
    # And auto picks the one pass for a network without batch statistics.
    m = module()
    assert resolve_views_forward("auto", m.backbone, m.expander) == "separate"
    for parent in [*m.backbone.modules(), *m.expander.modules()]:
        for name, child in parent.named_children():
            if isinstance(child, nn.modules.batchnorm._BatchNorm):
                setattr(parent, name, nn.GroupNorm(1, child.num_features))
    assert resolve_views_forward("auto", m.backbone, m.expander) == "concat"
    assert resolve_views_forward("separate", m.backbone, m.expander) == "separate"


def test_precision_auto_is_bf16_on_a_gpu_with_bf16_and_fp32_elsewhere(monkeypatch):
    assert resolve_precision("16-mixed", "gpu") == "16-mixed"  # an explicit choice is kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "auto") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "gpu") == "32-true"
