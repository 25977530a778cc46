"""Any encoder through the whole framework: a timm ViT, a timm ConvNeXt and a user's own encoder
train, evaluate and export; a timm export loads into timm itself; the ViT recipe on the digits."""

from __future__ import annotations

import json
import math
import time

import pytest
import timm
import torch
from torch import nn

from tests.runs import TINY_RUN, compose_eval, random_init_export, train_here, weights
from vicreg_lightning.backbones import build_backbone
from vicreg_lightning.evaluate import run as evaluate
from vicreg_lightning.export import export, load_encoder


def checkpoint_backbone(run_dir) -> nn.Module:
    """The backbone exactly as training held it: rebuilt from the checkpoint's hyper-parameters and
    loaded with its weights, without the export code."""
    checkpoint = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    hparams = checkpoint["hyper_parameters"]
    backbone = build_backbone(hparams["model"], hparams["image_size"]).module
    backbone.load_state_dict({k.removeprefix("backbone."): v for k, v in checkpoint["state_dict"].items()
                              if k.startswith("backbone.")}, strict=True)
    return backbone.eval()


def test_a_timm_export_loads_into_timm_with_the_checkpoints_features(tiny_vit_run, tmp_path):
    folder = export(tiny_vit_run, tmp_path / "export")
    info = json.loads((folder / "vicreg.json").read_text())
    assert info["arch"] == "timm:vit_tiny_patch16_224" and info["feature_dim"] == 192
    assert info["timm"] == {"model_name": "vit_tiny_patch16_224",
                            "kwargs": {"img_size": 32, "num_classes": 0, "patch_size": 8, "depth": 2}}
    # What a user writes with timm alone, from the sidecar.
    model = timm.create_model(info["timm"]["model_name"], **info["timm"]["kwargs"])
    model.load_state_dict(torch.load(folder / "backbone.pt", weights_only=True), strict=True)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = checkpoint_backbone(tiny_vit_run)(images)
        torch.testing.assert_close(model.eval()(images), expected, rtol=1e-5, atol=1e-5)
        loaded, _, _ = load_encoder(folder)
        torch.testing.assert_close(loaded(images), expected, rtol=1e-5, atol=1e-5)
    # The 2 steps moved the weights: a fresh model of the same call gives other features.
    assert not torch.allclose(timm.create_model(info["timm"]["model_name"], **info["timm"]["kwargs"]).eval()(images),
                              expected, atol=1e-3)


@pytest.mark.parametrize("backbone,feature_dim", [
    ("model.backbone=timm:convnext_atto", 320),
    ("model.backbone={_target_:tests.unit.test_backbones.small_cnn,width:24}", 24),
], ids=["timm-convnext", "own-encoder"])
def test_an_encoder_trains_evaluates_and_exports(backbone, feature_dim, tmp_path):
    run_dir = tmp_path / "run"
    proc = train_here(*TINY_RUN, backbone, "trainer.limit_val_batches=1", "callbacks.representation_health=null",
                 f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 2 and math.isfinite(metrics["train/loss"])
    assert all(torch.isfinite(t).all() for t in weights(run_dir).values() if t.is_floating_point())

    results = evaluate(compose_eval(f"weights={run_dir}", "eval=knn", "eval.knn.k=[20]",
                                    f"paths.output_dir={tmp_path / 'eval'}"))
    assert 0.1 <= results["eval/knn20_acc1"] <= 1.0

    folder = export(run_dir, tmp_path / "export")
    loaded, expander, info = load_encoder(folder)
    assert info["feature_dim"] == feature_dim and expander is not None
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), checkpoint_backbone(run_dir)(images), rtol=1e-5, atol=1e-5)


# The bars for experiment=digits_vit: linear evaluation and 20-NN top-1 on digits val, and
# the margin over a randomly initialised ViT of the same architecture, evaluated the same way.
VIT_TOP1_MIN = 0.90
VIT_MIN_GAIN_OVER_RANDOM = 0.15


@pytest.mark.slow
@pytest.mark.xdist_group("digits_vit")
def test_the_digits_vit_recipe_beats_random_init(digits_vit_run, tmp_path):
    train_seconds = float((digits_vit_run / "train_seconds.txt").read_text())
    trained = export(digits_vit_run, tmp_path / "trained")
    random_init = random_init_export(trained, tmp_path / "random")
    results = {}
    for name, folder in (("trained", trained), ("random", random_init)):
        start = time.monotonic()
        results[name] = evaluate(compose_eval(f"weights={folder}", "eval=[linear,knn]", "eval.knn.k=[20]",
                                              f"paths.output_dir={tmp_path / ('eval_' + name)}"))
        results[name]["wall_s"] = time.monotonic() - start
    for name, metrics in results.items():
        print(f"digits_vit {name}: linear {metrics['eval/linear_acc1']:.4f}, 20-NN {metrics['eval/knn20_acc1']:.4f} "
              f"(evaluation {metrics['wall_s']:.0f} s; training {train_seconds:.0f} s)")
    trained_metrics, random_metrics = results["trained"], results["random"]
    for key in ("eval/linear_acc1", "eval/knn20_acc1"):
        assert trained_metrics[key] >= VIT_TOP1_MIN, key
        assert trained_metrics[key] - random_metrics[key] >= VIT_MIN_GAIN_OVER_RANDOM, key
