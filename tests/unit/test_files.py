"""Image folders are checked before training: link loops and files that cannot be images are named
up front instead of failing (or silently training on grey) mid-epoch; a file whose body alone is
corrupt is named, or read around, when it is read."""

from __future__ import annotations

import io
import logging
import os
import socket
from concurrent.futures import ThreadPoolExecutor, TimeoutError
from pathlib import Path

import pytest
import torch
from PIL import Image

from tests.fake_data import corrupt_png_body, write_image_folder
from tests.runs import configs
from vicreg_lightning.data.datasets import build_datasets, read_rgb
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
            "dangling.png": "a dangling symbolic link", "socket.png": "not a regular file"}


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
    os.unlink(tmp_path / "train" / "class0" / "more")
    # A link to one file of the validation split, not to its folder.
    os.symlink(tmp_path / "val" / "class1" / "0.png", tmp_path / "train" / "class1" / "borrowed.png")
    with pytest.raises(DataError, match=r"borrowed.png' is a symbolic link to .*val/class1/0.png.*trained on and "
                                        r"validated on; remove the link"):
        build_datasets(data)


def test_a_fifo_named_like_an_image_is_refused_without_waiting_for_a_writer(tmp_path):
    folder = write_image_folder(tmp_path / "train", classes=1, per_class=2) / "class0"
    os.mkfifo(folder / "pipe.jpg")
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(find_bad_images, sorted(str(p) for p in folder.iterdir()))
        try:
            found = pending.result(timeout=30)
        except TimeoutError:
            # Release the check that waits on the pipe, so that the test ends.
            os.close(os.open(folder / "pipe.jpg", os.O_WRONLY | os.O_NONBLOCK))
            pytest.fail("the check opened the FIFO and waited for a writer")
    assert found == [(str(folder / "pipe.jpg"), "not a regular file (a FIFO, socket or device)")]


def test_a_skip_that_empties_a_class_or_a_class_too_small_to_split_is_refused_naming_it(tmp_path):
    write_image_folder(tmp_path / "train", classes=3, per_class=4)
    for image in (tmp_path / "train" / "class2").iterdir():
        image.write_bytes(b"")
    data, _ = configs("imagefolder", str(tmp_path), bad_images="skip")
    with pytest.raises(DataError, match=r"4 of 12 image files cannot be read .*which leaves class 'class2' without an "
                                        r"image; fix or remove its files, or remove the class folder"):
        build_datasets(data)
    for image in list((tmp_path / "train" / "class2").iterdir())[1:]:
        image.unlink()
    (tmp_path / "train" / "class2" / "0.png").write_bytes((tmp_path / "train" / "class0" / "0.png").read_bytes())
    with pytest.raises(DataError, match=r"class 'class2' of train/ has one image, too few to split off validation "
                                        r"images \(no val/ folder\)"):
        build_datasets(data)


def test_a_validation_folder_that_is_the_training_folder_is_named_as_such(tmp_path):
    write_image_folder(tmp_path / "train", classes=2, per_class=4)
    data, _ = configs("imagefolder", str(tmp_path), val_dir="train")
    with pytest.raises(DataError, match=r"data.val_dir='train' is data.train_dir: every validation image would be "
                                        r"trained on"):
        build_datasets(data)


def test_a_file_whose_body_does_not_decode_is_named_when_read_or_read_in_place_of_with_a_warning(tmp_path, caplog):
    # Its first and last bytes are a PNG's: the check before training passes it; the decoder does not.
    write_image_folder(tmp_path / "train", classes=2, per_class=4)
    corrupt_png_body(tmp_path / "train" / "class1" / "1.png")
    assert find_bad_images(sorted(str(p) for p in (tmp_path / "train").rglob("*.png"))) == []
    data, _ = configs("imagefolder", str(tmp_path), val_fraction=0.5)
    train, val, _ = build_datasets(data)
    everything = [(subset, index) for subset in (train, val) for index in range(len(subset))]
    bad = next((subset, index) for subset, index in everything
               if subset.dataset.samples[subset.indices[index]][0].endswith("class1/1.png"))
    with pytest.raises(DataError, match=r"class1/1.png: its body does not decode .*set data.bad_images=skip"):
        bad[0][bad[1]]
    data.bad_images = "skip"
    train, val, _ = build_datasets(data)
    subset = train if bad[0] is train else val
    with caplog.at_level(logging.WARNING):
        image, label = subset[bad[1]]
        again, _ = subset[bad[1]]
    # The next image of its class folder, with its label; one warning naming both files.
    assert label == 1 and torch.equal(image, read_rgb(str(tmp_path / "train" / "class1" / "2.png")))
    assert torch.equal(again, image)
    [warning] = [r.getMessage() for r in caplog.records if "does not decode" in r.getMessage()]
    assert "class1/1.png" in warning and "class1/2.png in its place" in warning
