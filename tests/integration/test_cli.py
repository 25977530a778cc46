"""``train.py`` as a user runs it: bad input gets one line, and the default run learns digits."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests import warm
from tests.fake_data import write_image_folder
from tests.runs import ROOT, train_here


def train(*overrides: str, timeout: float = 600) -> tuple[subprocess.CompletedProcess, float]:
    start = time.monotonic()
    proc = warm.run([sys.executable, str(ROOT / "train.py"), *overrides], timeout=timeout, cwd=ROOT)
    return proc, time.monotonic() - start


def empty_image_folder(tmp_path: Path) -> str:
    (tmp_path / "train" / "cats").mkdir(parents=True)
    (tmp_path / "train" / "dogs").mkdir(parents=True)
    return str(tmp_path)


# Through train.py, one case of each kind of refusal: a composition error, an unknown key, a value
# the schema check refuses, the default recipe under other data, missing data, a corrupt checkpoint,
# a run that diverges. The other bad values take the same paths; they are refused in-process below
# and in test_config.py, test_resume.py and test_data.py.
BAD_INPUT = [
    (["data=nonexistent"], "data=nonexistent: no such option"),
    (["loss.sim_coef=5"], "unknown config key 'loss.sim_coef'"),
    (["data.batch_size=1"], "data.batch_size=1"),
    (["data=cifar10"], "data=cifar10 under experiment=digits"),
    (["~experiment", "data=imagefolder", "data.root={empty}"], "no images"),
    (["ckpt_path={corrupt}"], "not a readable PyTorch file (corrupt or truncated)"),
    (["optim.base_lr=1e30", "trainer.limit_train_batches=3", "trainer.log_every_n_steps=1",
      "trainer.enable_progress_bar=false"], "non-finite"),
    (["--config-dir", "{tmp}/no_such_folder"], "config directory '{tmp}/no_such_folder' not found; give --config-dir"),
    (["--config-dir", "{presets}", "model=broken"], "model/broken.yaml, line 2, column 11: not valid YAML (mapping values are not allowed here)"),
]


@pytest.mark.parametrize("overrides,names", BAD_INPUT, ids=[" ".join(o) for o, _ in BAD_INPUT])
def test_bad_input_gets_one_clear_line(tmp_path, overrides, names):
    root = empty_image_folder(tmp_path / "empty")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"half a checkpoint")
    presets = tmp_path / "presets"
    (presets / "model").mkdir(parents=True)
    (presets / "model" / "broken.yaml").write_text("backbone: resnet18\n  expander: [\n")
    overrides = [o.format(empty=root, corrupt=corrupt, tmp=tmp_path, presets=presets) for o in overrides]
    names = names.format(tmp=tmp_path)
    run_dir = tmp_path / "run"
    proc, seconds = train(*overrides, f"hydra.run.dir={run_dir}")
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and names in lines[0]
    assert "Traceback" not in proc.stderr + proc.stdout
    assert not (run_dir / "checkpoints").exists()
    # Bad input must end the run, not leave it hanging; how fast is bench territory, not a test's.
    assert seconds < 180


def test_overrides_reach_the_run(tmp_path):
    """Every group and key can be overridden from the command line (a tiny folder data set)."""
    write_image_folder(tmp_path / "data" / "train", classes=2, per_class=8, size=24)
    run_dir = tmp_path / "run"
    proc = train_here(
        "~experiment", "data=imagefolder", f"data.root={tmp_path / 'data'}", "data.batch_size=4", "data.num_workers=0",
        "augment.size=16", "augment.val_resize=16", "augment.blur_kernel_size=3",
        "model.backbone=resnet10", "model.expander=32-16", "loss.sim_coeff=10", "loss.std_coeff=10",
        "loss.cov_coeff=2", "optim=sgd", "optim.base_lr=0.05", "optim.warmup_epochs=1", "trainer.max_epochs=2",
        "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    for expected in ("sim_coeff: 10", "std_coeff: 10", "cov_coeff: 2", "name: sgd", "expander: 32-16"):
        assert expected in config
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epoch"] == 2 and metrics["step"] == 2 * (13 // 4)  # 13 train images, drop_last
    hparams = (run_dir / "csv" / "hparams.yaml").read_text()
    assert "small_stem: true" in hparams  # auto: 16-px crops get the 3x3 stem


@pytest.mark.slow
@pytest.mark.xdist_group("default_run")
def test_default_run_learns_digits(default_run):
    """The README's main job: `python train.py` on the embedded digits, nothing else (trained once
    per test session, shared with the evaluation tests)."""
    metrics = json.loads((default_run / "metrics.json").read_text())
    seconds = float((default_run / "train_seconds.txt").read_text())
    print(f"default run: {seconds:.0f} s, val/probe_acc1={metrics['val/probe_acc1']:.4f}")
    assert metrics["val/probe_acc1"] >= 0.95
    assert metrics["val/probe_acc5"] >= metrics["val/probe_acc1"]
    for key in ("train/loss", "train/invariance", "train/variance", "train/covariance",
                "train/embed_std_mean", "train/embed_std_min", "train/probe_acc1", "lr", "health/embed_rankme"):
        assert key in metrics
    assert (default_run / ".hydra" / "config.yaml").exists()
    assert (default_run / "checkpoints" / "last.ckpt").exists()
    assert len(list((default_run / "checkpoints").glob("best-epoch*.ckpt"))) == 1
