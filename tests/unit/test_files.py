"""Image folders are checked before training: link loops and files that cannot be images are named
up front instead of failing (or silently training on grey) mid-epoch."""

from __future__ import annotations

import io
import logging
import os
import socket
from pathlib import Path

import pytest
from PIL import Image

from tests.fake_data import write_image_folder
from tests.runs import configs
from vicreg_lightning.data.datasets import build_datasets
from vicreg_lightning.data.files import find_bad_images
from vicreg_lightning.errors import DataError


def jpeg_bytes(size: int = 32) -> bytes:
    buffer = io.BytesIO()
    Image.effect_noise((size, size), 40).convert("RGB").save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def plant_bad_files(folder: Path) -> dict[str, str]:
    """One file of each kind that cannot be an image, in ``folder``; ``{name: expected reason}``."""
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not a picture\n")
    (folder / "truncated.jpg").write_bytes(jpeg_bytes()[:300])
    os.symlink(folder / "no-such-file.png", folder / "dangling.png")
    # A socket cannot be opened as a file (and unlike chmod 000, this holds for root too).
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(folder / "socket.png"))
    return {"empty.jpg": "an empty file", "notes.jpg": "not an image", "truncated.jpg": "a truncated JPEG",
            "dangling.png": "a dangling symbolic link", "socket.png": "unreadable"}


def test_every_kind_of_bad_file_is_found_and_good_images_pass(tmp_path):
    good = write_image_folder(tmp_path / "train", classes=1, per_class=3) / "class0"
    (good / "photo.jpg").write_bytes(jpeg_bytes())
    (good / "padded.jpg").write_bytes(jpeg_bytes() + b"\0" * 16)  # padding after the end marker
    (good / "motion.jpg").write_bytes(jpeg_bytes() + b"ftypmp42" * 4096)  # a video appended, as phones do
    Image.effect_noise((16, 16), 40).save(good / "small.webp")
    expected = plant_bad_files(good)
    found = dict(find_bad_images(sorted(str(p) for p in good.iterdir())))
    assert {Path(path).name: reason for path, reason in found.items()}.keys() == expected.keys()
    for path, reason in found.items():
        assert reason.startswith(expected[Path(path).name]), (path, reason)


def test_bad_files_are_refused_by_name_or_skipped_with_a_warning(tmp_path, caplog):
    write_image_folder(tmp_path / "train", classes=2, per_class=6)
    plant_bad_files(tmp_path / "train" / "class1")
    data, _ = configs("imagefolder", str(tmp_path))
    with pytest.raises(DataError, match=r"5 of 17 image files cannot be read \(.*empty.jpg: an empty file.*"
                                        r"set data.bad_images=skip"):
        build_datasets(data)
    data.bad_images = "skip"
    with caplog.at_level(logging.WARNING):
        train, val, classes = build_datasets(data)
    assert len(train) + len(val) == 12 and classes == 2
    assert "skipping 5 of 17" in caplog.text and "truncated.jpg: a truncated JPEG" in caplog.text


def test_a_symlink_loop_or_a_link_into_the_validation_split_is_refused(tmp_path):
    write_image_folder(tmp_path / "train", classes=2, per_class=4)
    write_image_folder(tmp_path / "val", classes=2, per_class=2)
    data, _ = configs("imagefolder", str(tmp_path))
    assert len(build_datasets(data)[0]) == 8
    loop = tmp_path / "train" / "class0" / "loop"
    os.symlink("..", loop)
    with pytest.raises(DataError, match="symbolic link loop"):
        build_datasets(data)
    loop.unlink()
    os.symlink(tmp_path / "val" / "class1", tmp_path / "train" / "class0" / "more")
    with pytest.raises(DataError, match="trained on and validated on"):
        build_datasets(data)
