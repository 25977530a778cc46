"""The data-set registry: what each data set is (classes, on-disk folders, the function that
builds it) and a quick look that it is there.

A new data set is one entry of :data:`DATASETS` (and its builder in
:mod:`vicreg_lightning.data.datasets`) plus one preset, ``conf/data/<name>.yaml``.
No torchvision import here (it takes seconds): the command line checks the data before anything
heavy loads. tests/unit/test_data.py checks these facts against torchvision's classes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from vicreg_lightning.errors import DataError

# data.num_workers=-1: one loader worker per CPU of the process, up to this many (more rarely pays
# for two-view decoding); the SLURM launcher asks for as many CPUs per task.
MAX_DEFAULT_WORKERS = 8
UNLABELED = -1  # label of unlabelled samples (STL-10's unlabeled split); the probe ignores them


@dataclass(frozen=True)
class DatasetEntry:
    """One data set ``data.name`` can name."""

    builder: str  # the function of vicreg_lightning.data.datasets that builds it from the data section
    num_classes: Optional[int]  # None: one class per sub-folder of data.train_dir
    archive_folder: Optional[str] = None  # the folder torchvision extracts its archive into (base_folder)
    required_folders: tuple[str, ...] = ()  # sub-folders of data.root that must exist


DATASETS: dict[str, DatasetEntry] = {
    "digits": DatasetEntry("digits", 10),
    "cifar10": DatasetEntry("cifar", 10, archive_folder="cifar-10-batches-py"),
    "cifar100": DatasetEntry("cifar", 100, archive_folder="cifar-100-python"),
    "stl10": DatasetEntry("stl10", 10, archive_folder="stl10_binary"),
    "imagenet": DatasetEntry("imagenet", 1000, required_folders=("train",)),
    "imagefolder": DatasetEntry("folder_with_split", None),
    "shards": DatasetEntry("shards", None),  # vicreg-shard's output: classes in its manifest.json
}
# torchvision.datasets.folder.IMG_EXTENSIONS: the files an ImageFolder reads.
IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def not_found(name: str, root: str, reason: str) -> str:
    return (
        f"data={name}: no readable data set under data.root={root!r} ({reason}); "
        "set data.download=true to fetch it, or point data.root at a copy"
    )


def split_folder(root: str, split_dir: str) -> Path:
    folder = Path(root) / split_dir
    if not folder.is_dir():
        raise DataError(
            f"data.root={root!r}: no folder {str(folder)!r}; expected {root}/{split_dir}/<class>/<image> "
            f"(set data.root, or data.train_dir/data.val_dir)"
        )
    return folder


def inspect_data(data: Any) -> int:
    """The number of classes of a ``data`` config's set, after a quick look that it is there
    (the folder exists and holds an image, or it will be downloaded). Reads no image."""
    entry = DATASETS[data.name]
    if data.name == "shards":
        from vicreg_lightning.data.shard_format import check_shards

        return len(check_shards(data)["classes"])
    if entry.archive_folder and not data.download and not (Path(data.root) / entry.archive_folder).is_dir():
        raise DataError(not_found(data.name, data.root, f"no folder {entry.archive_folder}/"))
    for folder in entry.required_folders:
        split_folder(data.root, folder)
    if entry.num_classes is not None:
        return entry.num_classes

    folder = split_folder(data.root, data.train_dir)
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())
    if not classes:
        raise DataError(f"data.root={data.root!r}: no class folders in {str(folder)!r} (expected {folder}/<class>/<image>)")
    if not any(_has_image(folder / c) for c in classes):
        raise DataError(
            f"data.root={data.root!r}: no images in {str(folder)!r} (its class folders are empty; "
            f"expected {folder}/<class>/<image>.jpg)"
        )
    if len(classes) == 1:
        raise DataError(
            f"data.root={data.root!r}: one class folder in {str(folder)!r} ({classes[0]!r}); the online probe and "
            "the evaluations classify, so they need at least 2 (split the images into their classes, or into "
            "any 2 groups if they have none)"
        )
    return len(classes)


def _has_image(folder: Path) -> bool:
    return any(
        name.lower().endswith(IMG_EXTENSIONS) for _, _, files in os.walk(folder) for name in files
    )
