"""Multi-crop VICReg: a digits run with two local crops trains and beats random init."""

from __future__ import annotations

import json

import pytest

from tests.runs import compose_eval, random_init_export, train_here
from vicreg_lightning.evaluate import run as evaluate
from vicreg_lightning.export import export


@pytest.mark.slow
def test_a_digits_run_with_two_local_crops_trains_and_beats_random_init(tmp_path):
    """The default recipe with 2 local crops of 16 px, 1 epoch; a linear probe and 20-NN on its
    features against a randomly initialised ResNet-10, evaluated the same way."""
    run_dir = tmp_path / "run"
    proc = train_here("augment.num_local_crops=2", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
                 f"hydra.run.dir={run_dir}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["step"] == 1437 // 128
    trained = export(run_dir, tmp_path / "trained")
    info = json.loads((trained / "vicreg.json").read_text())
    assert info["local_crop_size"] == 16 and info["augment"]["num_local_crops"] == 2
    random_init = random_init_export(trained, tmp_path / "random")
    results = {name: evaluate(compose_eval(f"weights={weights}", "eval=[linear,knn]", "eval.knn.k=[20]",
                                           f"paths.output_dir={tmp_path / name}"))
               for name, weights in (("trained", trained), ("random", random_init))}
    print("2 local crops, 1 epoch: online probe {:.3f}; ".format(metrics["val/probe_acc1"])
          + "; ".join(f"{name}: linear {r['eval/linear_acc1']:.3f}, 20-NN {r['eval/knn20_acc1']:.3f}"
                      for name, r in results.items()))
    for key in ("eval/linear_acc1", "eval/knn20_acc1"):
        assert results["trained"][key] - results["random"][key] >= 0.15, key
