"""Stability across groups and domains: the Fréchet distance between Gaussians fitted to two sets
of features, the leave-one-out outlier flag, and per group RankMe at equal sample count, kNN
accuracy and distance to the rest (:func:`group_stability`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from vicreg_lightning.metrics.groups import OUTLIER_NUM_STD, frechet_distance, outlier_flags
from vicreg_lightning.metrics.health import rankme

@dataclass
class GroupStats:
    """One group of the stability table (see :func:`group_stability`)."""

    name: str
    size: int
    rankme_features: float
    rankme_embeddings: float | None
    knn_accuracy: float
    distance: float
    flagged: bool


def group_stability(
    features: Tensor, embeddings: Tensor | None, group_index: Tensor, group_names: Sequence[str],
    knn_correct: Tensor, seed: int = 0, num_std: float = OUTLIER_NUM_STD, device: torch.device | str = "cpu",
) -> list[GroupStats]:
    """Per group (``group_index[i]`` is sample i's index into ``group_names``): RankMe, kNN accuracy,
    and the :func:`frechet_distance` between the group's features and those of all other samples,
    flagged by :func:`outlier_flags`.

    RankMe grows with the number of samples (it is at most ``min(N, D)``), so every group's is
    computed on the same number of samples: the smallest group's size, a seeded random draw from the
    larger ones. ``knn_correct`` says, per sample, whether its kNN prediction was right. Groups with
    fewer than 2 samples are left out. Computed on ``device``."""
    sizes = torch.bincount(group_index, minlength=len(group_names))
    present = [g for g in range(len(group_names)) if sizes[g] >= 2]
    if not present:
        raise ValueError("no group has 2 samples or more")
    n_equal = int(min(sizes[g] for g in present))
    generator = torch.Generator().manual_seed(seed)
    features, index_on_device = features.to(device), group_index.to(device)
    rows = []
    for g in present:
        members = (group_index == g).nonzero().squeeze(1)
        equal = members[torch.randperm(len(members), generator=generator)[:n_equal]]
        in_group = index_on_device == g
        rest = features[~in_group]
        rows.append(GroupStats(
            name=group_names[g], size=len(members), rankme_features=float(rankme(features[equal.to(device)])),
            rankme_embeddings=float(rankme(embeddings[equal])) if embeddings is not None else None,
            knn_accuracy=float(knn_correct[members].float().mean()),
            distance=frechet_distance(features[in_group], rest) if len(rest) >= 2 else math.nan, flagged=False,
        ))
    for row, flagged in zip(rows, outlier_flags([r.distance for r in rows], num_std), strict=True):
        row.flagged = flagged
    return rows
