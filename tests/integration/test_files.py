"""``train.py`` names a file that cannot be an image in one line, before anything trains, and one
whose body does not decode when a loader worker reads it (the checks themselves:
tests/unit/test_files.py)."""

from __future__ import annotations

import sys

from tests import warm
from tests.fake_data import corrupt_png_body, write_image_folder
from tests.runs import ROOT


def test_train_py_names_a_bad_file_in_one_line(tmp_path):
    write_image_folder(tmp_path / "data" / "train", classes=2, per_class=4)
    (tmp_path / "data" / "train" / "class0" / "empty.jpg").write_bytes(b"")
    proc = warm.run([sys.executable, str(ROOT / "train.py"), "~experiment", "data=imagefolder",
                     f"data.root={tmp_path / 'data'}", "data.batch_size=4", f"hydra.run.dir={tmp_path / 'run'}"],
                    timeout=300, cwd=ROOT)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "empty.jpg: an empty file" in lines[0] and "Traceback" not in proc.stderr


def test_a_file_that_fails_to_decode_mid_epoch_in_a_loader_worker_is_one_line_or_skipped(tmp_path):
    # The default loader (a worker per CPU) reads it in a worker process: the line is the worker's own.
    write_image_folder(tmp_path / "data" / "train", classes=2, per_class=4)
    corrupt_png_body(tmp_path / "data" / "train" / "class1" / "1.png")
    command = [sys.executable, str(ROOT / "train.py"), "~experiment", "data=imagefolder", f"data.root={tmp_path / 'data'}",
               "data.batch_size=4", "augment.size=32", "augment.val_resize=32", "model.expander=64-64",
               "trainer.max_epochs=1", "optim.warmup_epochs=0", "trainer.log_every_n_steps=1",
               "trainer.enable_progress_bar=false"]
    refused = warm.run([*command, f"hydra.run.dir={tmp_path / 'refused'}"], timeout=300, cwd=ROOT)
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2, refused.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: data.root: ") and "class1/1.png: its body does not decode" in lines[0]
    assert "Traceback" not in refused.stderr + refused.stdout
    skipped = warm.run([*command, "data.bad_images=skip", f"hydra.run.dir={tmp_path / 'skipped'}"], timeout=300, cwd=ROOT)
    assert skipped.returncode == 0, skipped.stderr[-3000:]
    assert "class1/1.png: its body does not decode" in skipped.stdout + skipped.stderr
    assert (tmp_path / "skipped" / "metrics.json").exists()
