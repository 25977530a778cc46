"""``train.py`` names a file that cannot be an image in one line, before anything trains (the
checks themselves: tests/unit/test_files.py)."""

from __future__ import annotations

import sys

from tests import warm
from tests.fake_data import write_image_folder
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
