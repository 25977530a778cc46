"""Small data sets written in the real on-disk formats that torchvision reads.

Downloads are impossible in tests, so each function writes what ``download=True`` would have left
on disk (CIFAR's pickled batches, STL-10's binary files, ImageNet's folders and ``meta.bin``, an
ImageFolder of PNG files). torchvision checks the CIFAR/STL archives' md5 sums, which generated
files cannot match; :func:`skip_integrity_checks` turns that check off for the test's duration.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image


def _images(n: int, size: int, seed: int) -> np.ndarray:
    """``n`` random uint8 images (N, H, W, 3) whose pixel statistics depend on the label."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def write_cifar(root: Path, num_classes: int = 10, n_train: int = 40, n_test: int = 20) -> Path:
    """CIFAR-10 (``cifar-10-batches-py``) or CIFAR-100 (``cifar-100-python``) pickles."""
    cifar100 = num_classes == 100
    folder = root / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "fine_labels" if cifar100 else "labels"
    rng = np.random.default_rng(0)

    def batch(n: int, seed: int) -> dict:
        data = _images(n, 32, seed).transpose(0, 3, 1, 2).reshape(n, -1)  # CIFAR stores CHW rows
        return {"data": data, label_key: rng.integers(0, num_classes, n).tolist()}

    if cifar100:
        files = {"train": batch(n_train, 1), "test": batch(n_test, 2)}
        meta = {"fine_label_names": [f"class{i}" for i in range(100)]}
        meta_name = "meta"
    else:
        per = n_train // 5
        files = {f"data_batch_{i}": batch(per, i) for i in range(1, 6)}
        files["test_batch"] = batch(n_test, 9)
        meta = {"label_names": [f"class{i}" for i in range(10)]}
        meta_name = "batches.meta"
    for name, content in {**files, meta_name: meta}.items():
        with open(folder / name, "wb") as f:
            pickle.dump(content, f)
    return root


def write_stl10(root: Path, n_train: int = 20, n_unlabeled: int = 30, n_test: int = 20) -> Path:
    """``stl10_binary/``: column-major uint8 images and 1-based uint8 labels."""
    folder = root / "stl10_binary"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("unlabeled", n_unlabeled), ("test", n_test)):
        images = _images(n, 96, hash(split) % 1000).transpose(0, 3, 2, 1)  # (N, C, W, H) on disk
        images.tofile(folder / f"{split}_X.bin")
        if split != "unlabeled":
            rng.integers(1, 11, n).astype(np.uint8).tofile(folder / f"{split}_y.bin")
    (folder / "class_names.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    return root


def write_image_folder(root: Path, classes: int = 3, per_class: int = 6, size: int = 40) -> Path:
    """``root/<class>/<i>.png``."""
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i, image in enumerate(_images(per_class, size, seed=c * 100 + hash(root.name) % 100)):
            Image.fromarray(image).save(root / f"class{c}" / f"{i}.png")
    return root


def corrupt_png_body(path: Path) -> None:
    """Zero a PNG's image data in place: its signature and end marker stay, the decoder refuses it."""
    data = bytearray(path.read_bytes())
    start = data.find(b"IDAT")
    length = int.from_bytes(data[start - 4:start], "big")
    data[start + 4:start + 4 + length] = bytes(length)
    path.write_bytes(bytes(data))


def write_imagenet(root: Path, classes: int = 3, per_class: int = 6, size: int = 40) -> Path:
    """torchvision's prepared ImageNet: ``train/<wnid>/``, ``val/<wnid>/`` and ``meta.bin``."""
    wnids = [f"n{c:08d}" for c in range(classes)]
    for split in ("train", "val"):
        for c, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(_images(per_class, size, seed=c * 10 + len(split))):
                Image.fromarray(image).save(folder / f"{i}.JPEG", format="JPEG")
    wnid_to_classes = {wnid: (f"class {c}",) for c, wnid in enumerate(wnids)}
    val_wnids = [wnid for wnid in wnids for _ in range(per_class)]
    torch.save((wnid_to_classes, val_wnids), root / "meta.bin")
    return root


@pytest.fixture
def skip_integrity_checks(monkeypatch):
    """Accept generated CIFAR/STL-10 files whose md5 sums cannot match the real archives."""
    for module in (torchvision.datasets.cifar, torchvision.datasets.stl10):
        monkeypatch.setattr(module, "check_integrity", lambda *args, **kwargs: True)
