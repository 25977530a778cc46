"""The labelled part of a data set, class-balanced subsets, and the evaluation's training transform."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import Dataset, Subset

from vicreg_lightning.data.augment import view_transform
from vicreg_lightning.data.catalog import UNLABELED
from vicreg_lightning.errors import DataError


def labels_of(dataset: Dataset) -> Tensor:
    """The labels of a data set of :func:`~vicreg_lightning.data.datasets.build_datasets`, without
    reading its images where it keeps them apart (in-memory sets, image folders)."""
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.long)]
    for attribute in ("labels", "targets"):  # TensorImages; ImageFolder and ImageNet
        labels = getattr(dataset, attribute, None)
        if labels is not None:
            return torch.as_tensor(labels, dtype=torch.long)
    return torch.tensor([int(label) for _, label in dataset], dtype=torch.long)  # type: ignore[attr-defined]


def labelled_part(dataset: Dataset, split: str, data_name: str) -> tuple[Dataset, Tensor]:
    """``(dataset, labels)`` without the unlabelled images (label -1: STL-10's unlabeled split,
    which leaves STL-10's 5,000 labelled training images, its usual evaluation set)."""
    labels = labels_of(dataset)
    keep = labels != UNLABELED
    if not keep.any():
        raise DataError(
            f"data={data_name}: the {split} split has no labelled image (every label is -1); the linear, "
            "k-NN and semi-supervised evaluations need labels: choose a labelled data set with data=<option>"
        )
    if keep.all():
        return dataset, labels
    return Subset(dataset, keep.nonzero().squeeze(1).tolist()), labels[keep]


def class_balanced_subset(labels: Tensor, percent: float, seed: int) -> Tensor:
    """Sorted indices of a seeded ``percent`` % of each class (at least one image per class), as
    SimCLR's 1% / 10% ImageNet splits (about 13 / 128 images of each class)."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().squeeze(1).numpy()
        count = max(1, round(len(members) * percent / 100))
        chosen.append(rng.choice(members, size=count, replace=False))
    return torch.from_numpy(np.sort(np.concatenate(chosen)))


def train_transform(augment: Any) -> Callable[[Tensor], Tensor]:
    """Random-resized crop and flip of the run's ``augment`` (scale, ratio, flip probability):
    its training view with colour jitter, grayscale, blur and solarisation turned off."""
    crop_and_flip = OmegaConf.merge(augment, {"jitter_prob": 0.0, "grayscale_prob": 0.0})
    return view_transform(crop_and_flip, OmegaConf.create({"blur_prob": 0.0, "solarize_prob": 0.0}))
