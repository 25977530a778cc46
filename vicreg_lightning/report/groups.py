"""Stability across groups and domains: the Fréchet distance between Gaussians fitted to two sets
of features, the leave-one-out outlier flag, and per group RankMe at equal sample count, kNN
accuracy and distance to the rest (:func:`group_stability`)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import Dataset

from vicreg_lightning.data.catalog import UNLABELED
from vicreg_lightning.data.datasets import build_datasets
from vicreg_lightning.errors import UserError
from vicreg_lightning.features import Features
from vicreg_lightning.metrics.groups import OUTLIER_NUM_STD, frechet_distance, group_index as index_groups, outlier_flags
from vicreg_lightning.metrics.health import rankme
from vicreg_lightning.report.config import ReportOptions
from vicreg_lightning.report.document import Document, fmt
from vicreg_lightning.report.plotting import pyplot, save_figure
from vicreg_lightning.report.probes import KNN_K, KNN_TEMPERATURE, knn_correct
from vicreg_lightning.report.source import LoadedEncoder

FIGURES: tuple[str, ...] = ("groups.png",)


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


def check_group_sizes(labels: Tensor, metadata: list[str] | None, options: ReportOptions) -> None:
    """Refuse, before the slow sections, validation images in which no group (a class, or a group of
    ``--groups-csv``) has the 2 labelled images that its statistics need."""
    labelled = labels != UNLABELED
    if metadata is not None:
        groups = [name for name, keep in zip(metadata, labelled.tolist()) if keep]
        sizes = torch.bincount(index_groups(groups)[1]) if groups else torch.zeros(0)
    else:
        sizes = torch.unique(labels[labelled], return_counts=True)[1]
    if len(sizes) and int(sizes.max()) >= 2:
        return
    if metadata is not None:
        raise UserError(f"--groups-csv {options.groups_csv}: no group holds 2 labelled validation images: group "
                        "statistics need 2 images of a group or more; merge groups into larger ones")
    raise UserError(f"--max-samples={options.max_samples} leaves no class with 2 validation images: group "
                    "statistics need 2 images of a group or more; give a larger --max-samples")


def groups_section(doc: Document, encoder: LoadedEncoder, train: Features, val: Features, names: list[str],
                   metadata: list[str] | None, num_classes: int, options: ReportOptions, device: torch.device,
                   represent: Callable[[Dataset], Features], out: Path) -> dict[str, Any]:
    """RankMe, kNN accuracy and the Fréchet distance to the rest per group (the classes, the groups of
    ``--groups-csv``, a ``--domain``): the table, ``groups.png`` and the ``groups`` key."""
    doc.heading("Stability across groups and domains")
    features, embeddings, group_index, labels = val.features, val.embeddings, val.labels, val.labels
    correct = knn_correct(train, val, num_classes)
    group_names = [f"class {n}" for n in names]
    if metadata is not None:
        group_names, group_index = index_groups(metadata)
    if options.domain_name is not None:
        domain_data = OmegaConf.merge(encoder.data, {"name": options.domain_name,
                                                     **({"root": options.domain_root} if options.domain_root else {})})
        domain_train, domain_val, domain_classes = build_datasets(domain_data)
        domain, domain_bank = represent(domain_val), represent(domain_train)
        features = torch.cat([features, domain.features])
        embeddings = torch.cat([embeddings, domain.embeddings]) if embeddings is not None else None
        group_index = torch.cat([group_index, torch.full_like(domain.labels, len(group_names))])
        labels = torch.cat([labels, domain.labels])
        correct = torch.cat([correct, knn_correct(domain_bank, domain, domain_classes)])
        group_names.append(f"domain {options.domain_name}")
    keep = labels != UNLABELED  # kNN accuracy needs a label
    groups = group_stability(features[keep], embeddings[keep] if embeddings is not None else None,
                             group_index[keep], group_names, correct[keep], options.seed, device=device)
    plot_groups(groups, out / "groups.png")
    doc.table(["group", "images", "RankMe (features)", "RankMe (embeddings)", "kNN accuracy",
               "Fréchet distance to the rest", "flagged"],
              [[g.name, g.size, fmt(g.rankme_features, 1), fmt(g.rankme_embeddings, 1), fmt(g.knn_accuracy),
                fmt(g.distance, 2), "**yes**" if g.flagged else ""] for g in groups])
    domain_text = f" and the data set {options.domain_name} as one group" if options.domain_name else ""
    source = f"the groups of {options.groups_csv}" if metadata is not None else "the validation classes"
    doc.text(f"Groups: {source}{domain_text}. RankMe on {min(g.size for g in groups)} images of "
             f"each group (the smallest group's size: RankMe grows with N). kNN: weighted cosine kNN (k={KNN_K}, "
             f"T={KNN_TEMPERATURE}) of the backbone features among the training features of the same data set. "
             "Distance: squared Fréchet distance between Gaussians fitted to the group's backbone features and to "
             f"all the others'. Flagged: a distance above the mean + {OUTLIER_NUM_STD:g} std of the other groups' "
             "distances (needs at least 3 groups). "
             + ("Between classes a large distance is what a discriminative representation gives: the flag says "
                "which group to look at (a domain shift, a class the encoder maps apart), not that it is wrong."
                if metadata is None else "Metadata groups with the same mix of classes should lie close together: a "
                "flagged group is one the encoder maps apart (a site, device or population shift to look at)."))
    doc.figure("groups.png", "Per group: Fréchet distance to the rest (red: flagged), kNN accuracy and RankMe")
    return {"groups": [asdict(g) for g in groups]}


def plot_groups(rows: list[GroupStats], path: Path) -> None:
    plt = pyplot()
    names = [r.name for r in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(6, 0.4 * len(rows)), 6), sharex=True)
    top.bar(range(len(rows)), [r.distance for r in rows], color=["red" if r.flagged else "tab:blue" for r in rows])
    top.set(ylabel="Fréchet distance to the rest", title="Groups: distance (red: flagged), kNN accuracy, RankMe")
    bottom.bar(range(len(rows)), [r.knn_accuracy for r in rows], color="tab:green")
    bottom.set(ylabel="kNN accuracy", ylim=(0, 1))
    rank_axis = bottom.twinx()
    rank_axis.plot(range(len(rows)), [r.rankme_features for r in rows], "ko-", markersize=3, label="RankMe (features)")
    rank_axis.set_ylabel("RankMe (features)")
    if len(rows) <= 50:
        bottom.set_xticks(range(len(rows)), names, rotation=45 if len(rows) > 4 else 0, ha="right")
    save_figure(fig, path)
