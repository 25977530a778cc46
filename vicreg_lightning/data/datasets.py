"""Data sets as uint8 ``(C, H, W)`` image tensors with integer labels.

Each data set comes from its real torchvision class, so ``download=True`` and the on-disk formats
are torchvision's own. In-memory sets (digits, CIFAR, STL-10) are held as one uint8 tensor; folder
sets (ImageNet, ImageFolder) decode each file once per access (OpenCV), and both
views are cut from that one decoded image. Unlabelled samples (STL-10's unlabeled split) carry
label -1, which the online probe ignores.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from vicreg_lightning.data.catalog import DATASETS, IMG_EXTENSIONS, not_found, split_folder
from vicreg_lightning.data.files import check_folder_walk, describe_bad_images, find_bad_images
from vicreg_lightning.errors import DataError

log = logging.getLogger(__name__)


class TensorImages(Dataset):
    """Images held in memory as one uint8 tensor ``(N, C, H, W)``."""

    def __init__(self, images: Tensor, labels: Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images of shape (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.images, self.labels = images, labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        return self.images[index], int(self.labels[index])


class Transformed(Dataset):
    """``(image, label) -> (transform(image), label)`` over any data set."""

    def __init__(self, dataset: Dataset, transform: Callable[[Tensor], Any]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image, label = self.dataset[index]
        return self.transform(image), label


class KeyedSamples(Dataset):
    """Training samples addressed by ``(epoch, index)`` keys (what
    :class:`~vicreg_lightning.data.sampler.EpochSampler` yields):
    ``(epoch, index) -> (transform(image, epoch, index), label)``, so that a sample's augmentation
    can be a function of the epoch and the index alone."""

    def __init__(self, dataset: Dataset, transform: Callable[[Tensor, int, int], Any]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int]) -> tuple[Any, int]:
        epoch, index = key
        image, label = self.dataset[index]
        return self.transform(image, epoch, index), label


def read_rgb(path: str) -> Tensor:
    """Decode an image file to a uint8 RGB ``(3, H, W)`` tensor (:func:`decode_rgb`)."""
    with open(path, "rb") as f:
        return decode_rgb(f.read())


# What the decoders raise for a body they cannot read (OpenCV returns None; then Pillow raises).
UNDECODABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class FolderImages:
    """The loader of image folders (ImageFolder's and ImageNet's): :func:`read_rgb`, and
    ``data.bad_images``'s rule for a file whose body the decoder refuses. The check before training
    (:func:`~vicreg_lightning.data.files.find_bad_images`) reads each file's ends, not its body: a
    file with an image's first and last bytes and a corrupt body (a PNG with a zeroed IDAT chunk) is
    found when it is read. ``error``: the run stops there with one line naming the file (the last
    checkpoint kept; ``ckpt_path=last`` continues once it is fixed). ``skip``: the next image of the
    same class folder is read in its place, so the label stays right and the batch full, with a
    warning naming both, once per file and loader process.

    A libjpeg decode of a corrupt JPEG body succeeds with a warning (grey blocks where the data is
    bad): no decoder refuses it, and so neither does this."""

    def __init__(self, bad_images: str) -> None:
        self.bad_images = bad_images
        # {file that does not decode: the image read in its place}, found once per loader process.
        self.substitutes: dict[str, str] = {}

    def __call__(self, path: str) -> Tensor:
        path = self.substitutes.get(path, path)
        try:
            return read_rgb(path)
        except UNDECODABLE as error:
            problem = f"{path}: its body does not decode ({error})"
            if self.bad_images != "skip":
                raise DataError(f"data.root: {problem}; fix or remove it, or set data.bad_images=skip") from None
            return self._in_place_of(path, problem)

    def _in_place_of(self, path: str, problem: str) -> Tensor:
        folder, name = os.path.split(path)
        names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMG_EXTENSIONS))
        after = names.index(name) + 1 if name in names else 0
        for other in (os.path.join(folder, n) for n in names[after:] + names[:after]):
            if other == path or not os.path.isfile(other):  # not a FIFO: opening one waits for a writer
                continue
            try:
                image = read_rgb(other)
            except UNDECODABLE:
                continue
            self.substitutes[path] = other
            log.warning("data.bad_images=skip: %s; read %s in its place (%d such files in this loader process)",
                        problem, other, len(self.substitutes))
            return image
        raise DataError(f"data.root: {problem}, and no other image of {folder!r} decodes; fix or remove its files")


def decode_rgb(encoded: bytes | memoryview) -> Tensor:
    """Decode an encoded image (a file's bytes) to a uint8 RGB ``(3, H, W)`` tensor over
    ``(H, W, 3)`` memory: the one decoder of image folders and shards.

    OpenCV first (libjpeg-turbo; about 1.5x Pillow's JPEG decode with the conversion to RGB),
    ignoring EXIF orientation as Pillow and torchvision do; Pillow for what OpenCV cannot read
    (GIF, palette images with odd modes) and for PNG (the same pixels, a little slower): the libpng
    under OpenCV prints a corrupt PNG's error to stderr itself, beside the one line that names the
    file (:class:`FolderImages`)."""
    array = None
    if bytes(encoded[:len(_PNG_SIGNATURE)]) != _PNG_SIGNATURE:
        array = cv2.imdecode(np.frombuffer(encoded, np.uint8), cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION)
    if array is None:
        with Image.open(io.BytesIO(encoded)) as image:
            array = np.array(image.convert("RGB"))
    return torch.from_numpy(array).permute(2, 0, 1)


def _from_hwc(array: np.ndarray) -> Tensor:
    # (N, C, H, W) over the (N, H, W, C) memory (channels-last), as the augmentation reads it.
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2)


def digits(data: Any) -> tuple[Dataset, Dataset, int]:
    """scikit-learn's handwritten digits (1,797 8×8 images, 10 classes), seeded stratified split.

    The 17 grey levels (0..16) are scaled to 0..255 and repeated over three channels so that the
    ImageNet-shaped pipeline (colour jitter, 3-channel stems) applies unchanged.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = torch.from_numpy(np.round(bunch.images * (255 / 16)).astype(np.uint8))
    # Channels-last memory: the loader's OpenCV augmentation reads (H, W, C) without a copy.
    images = images[:, None].expand(-1, 3, -1, -1).contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(bunch.target)
    train_idx, val_idx = train_test_split(
        np.arange(len(labels)), test_size=data.val_fraction, random_state=data.split_seed, stratify=bunch.target
    )
    train_idx, val_idx = torch.from_numpy(train_idx), torch.from_numpy(val_idx)
    return (
        TensorImages(images[train_idx], labels[train_idx]),
        TensorImages(images[val_idx], labels[val_idx]),
        10,
    )


def _torchvision_set(cls: type, name: str, root: str, download: bool, **kwargs: Any) -> Any:
    try:
        return cls(root, download=download, **kwargs)
    except RuntimeError as e:  # torchvision's "Dataset not found or corrupted"
        raise DataError(not_found(name, root, str(e))) from None
    except OSError as e:  # the download failed: no network, a proxy, a full disk
        raise DataError(
            f"data={name}: downloading into data.root={root!r} failed ({e}); "
            "check the network, or put the data set there yourself and set data.download=false"
        ) from None


def cifar(data: Any) -> tuple[Dataset, Dataset, int]:
    """CIFAR-10 or CIFAR-100 (``data.name``)."""
    cls = torchvision.datasets.CIFAR10 if data.name == "cifar10" else torchvision.datasets.CIFAR100
    train = _torchvision_set(cls, data.name, data.root, data.download, train=True)
    val = _torchvision_set(cls, data.name, data.root, data.download, train=False)
    return (
        TensorImages(_from_hwc(train.data), torch.tensor(train.targets)),
        TensorImages(_from_hwc(val.data), torch.tensor(val.targets)),
        len(train.classes),
    )


def stl10(data: Any) -> tuple[Dataset, Dataset, int]:
    """Pretrain on unlabeled + train (105,000 images), validate on test."""
    cls = torchvision.datasets.STL10
    train = _torchvision_set(cls, "stl10", data.root, data.download, split="train+unlabeled")
    val = _torchvision_set(cls, "stl10", data.root, data.download, split="test")
    return (
        TensorImages(torch.from_numpy(train.data), torch.from_numpy(train.labels)),
        TensorImages(torch.from_numpy(val.data), torch.from_numpy(val.labels)),
        len(train.classes),
    )


def image_folder(root: str, split_dir: str, bad_images: str, other_splits: Sequence[str] = ()
                 ) -> torchvision.datasets.ImageFolder:
    folder = split_folder(root, split_dir)
    check_folder_walk(folder, [Path(root) / other for other in other_splits])
    try:
        dataset = torchvision.datasets.ImageFolder(str(folder), loader=FolderImages(bad_images))
    except FileNotFoundError as e:
        raise DataError(f"data.root={root!r}: no images in {str(folder)!r} ({e})") from None
    return without_bad_images(dataset, bad_images)


def without_bad_images(dataset: torchvision.datasets.ImageFolder, bad_images: str) -> torchvision.datasets.ImageFolder:
    """Find the files of ``dataset`` that cannot be images before training: refuse them
    (``data.bad_images=error``), or drop them with a warning that names them all (``skip``)."""
    bad = find_bad_images([path for path, _ in dataset.samples])
    if not bad:
        return dataset
    summary = describe_bad_images(bad, len(dataset.samples))
    if bad_images != "skip":
        raise DataError(f"data.root: {summary}; fix or remove them, or set data.bad_images=skip")
    log.warning("skipping %s:\n%s", summary, "\n".join(f"{path}: {reason}" for path, reason in bad))
    dropped = {path for path, _ in bad}
    dataset.samples = dataset.imgs = [sample for sample in dataset.samples if sample[0] not in dropped]
    dataset.targets = [target for _, target in dataset.samples]
    if not dataset.samples:
        raise DataError(f"data.root: {summary}; none is left")
    emptied = sorted(set(dataset.classes) - {dataset.classes[target] for target in dataset.targets})
    if emptied:
        raise DataError(f"data.root: {summary}, which leaves class {', '.join(map(repr, emptied))} without an image; "
                        "fix or remove its files, or remove the class folder")
    return dataset


def imagenet(data: Any) -> tuple[Dataset, Dataset, int]:
    """ILSVRC-2012 in torchvision's layout (``train/``, ``val/`` and the devkit or ``meta.bin``).
    ImageNet cannot be downloaded automatically; torchvision prepares it from the archives."""
    root, bad_images = data.root, data.bad_images
    try:
        train = torchvision.datasets.ImageNet(root, split="train", loader=FolderImages(bad_images))
        val = torchvision.datasets.ImageNet(root, split="val", loader=FolderImages(bad_images))
    except (RuntimeError, FileNotFoundError) as e:
        raise DataError(
            f"data=imagenet: data.root={root!r} does not hold ImageNet in torchvision's layout ({e}); "
            "put ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz there"
        ) from None
    return without_bad_images(train, bad_images), without_bad_images(val, bad_images), len(train.classes)


def folder_with_split(data: Any) -> tuple[Dataset, Dataset, int]:
    """Any ImageFolder; without a ``val_dir`` folder, a seeded stratified split of ``train_dir``."""
    root, train_dir, val_dir, bad_images = data.root, data.train_dir, data.val_dir, data.bad_images
    has_val = (Path(root) / val_dir).is_dir()
    if has_val and (Path(root) / val_dir).resolve() == (Path(root) / train_dir).resolve():
        raise DataError(f"data.val_dir={val_dir!r} is data.train_dir: every validation image would be trained on; "
                        "give another folder, or one that does not exist for a seeded split of the training images")
    train = image_folder(root, train_dir, bad_images, other_splits=[val_dir] if has_val else [])
    if has_val:
        val = image_folder(root, val_dir, bad_images, other_splits=[train_dir])
        if val.classes != train.classes:
            raise DataError(
                f"data.root={root!r}: classes of {val_dir}/ ({len(val.classes)}) differ from {train_dir}/ "
                f"({len(train.classes)}); give both the same class folders"
            )
        return train, val, len(train.classes)
    from sklearn.model_selection import train_test_split
    from torch.utils.data import Subset

    counts = np.bincount(train.targets, minlength=len(train.classes))
    if counts.min() < 2:  # a stratified split puts one image of each class on either side
        lonely = [name for name, count in zip(train.classes, counts) if count < 2]
        raise DataError(f"data.root={root!r}: class {', '.join(map(repr, lonely))} of {train_dir}/ has one image, "
                        f"too few to split off validation images (no {val_dir}/ folder); add images, or give a "
                        f"{val_dir}/ folder")
    train_idx, val_idx = train_test_split(
        np.arange(len(train)), test_size=data.val_fraction, random_state=data.split_seed, stratify=train.targets
    )
    return Subset(train, train_idx.tolist()), Subset(train, val_idx.tolist()), len(train.classes)


def shards(data: Any) -> tuple[Dataset, Dataset, int]:
    """vicreg-shard's output (``data.input_dir``), each split map-style
    (:class:`~vicreg_lightning.data.shards.ShardImages`); needs the ``[shards]`` extra."""
    from vicreg_lightning.data.shards import shard_sets

    return shard_sets(data)


def build_datasets(data: Any) -> tuple[Dataset, Dataset, int]:
    """``(train, val, num_classes)`` for a ``data`` config section (its entry of the registry,
    :data:`~vicreg_lightning.data.catalog.DATASETS`); raises :class:`DataError`."""
    if data.name not in DATASETS:
        raise DataError(f"data.name={data.name!r}: unknown data set; one of {', '.join(DATASETS)}")
    return globals()[DATASETS[data.name].builder](data)
