"""Classifiers and maps on frozen features: the linear probe (a scikit-learn logistic regression),
the weighted kNN classifier of the stability section, and the 2-D map of the embeddings (t-SNE, or
PCA above :data:`TSNE_MAX_POINTS` points)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vicreg_lightning.data.catalog import UNLABELED
from vicreg_lightning.features import Features
from vicreg_lightning.metrics.knn import knn_class_scores
from vicreg_lightning.report.document import Document, fmt
from vicreg_lightning.report.plotting import pyplot, save_figure

FIGURES: tuple[str, ...] = ("probe_per_class.png", "confusion.png", "embedding_map.png")

# t-SNE is O(N²) in memory and slow above a few thousand points; PCA maps any number.
TSNE_MAX_POINTS = 2000
# kNN classifier of Wu et al. (CVPR 2018) as DINO evaluates it (Caron et al., ICCV 2021).
KNN_K = 20
KNN_TEMPERATURE = 0.07


def linear_probe(train_x: Tensor, train_y: Tensor, val_x: Tensor, num_classes: int) -> np.ndarray:
    """Class probabilities ``(N, num_classes)`` of a logistic regression (scikit-learn, L2, C=1)
    fitted on standardised training features; unlabelled training samples are left out, a class
    without training samples gets probability 0."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labelled = (train_y != UNLABELED).numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probe.fit(train_x.numpy()[labelled], train_y.numpy()[labelled])
    probabilities = np.zeros((len(val_x), num_classes))
    probabilities[:, probe.classes_] = probe.predict_proba(val_x.numpy())
    return probabilities


def two_d_map(x: Tensor, method: str = "auto", seed: int = 0) -> tuple[np.ndarray, Tensor, str]:
    """2-D coordinates of rows of ``x``, which rows (indices), and the method used.

    ``auto``: t-SNE (perplexity 30, PCA initialisation) up to :data:`TSNE_MAX_POINTS` rows, PCA of
    every row above; ``tsne`` maps a seeded draw of :data:`TSNE_MAX_POINTS` rows when there are more."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    rows = torch.arange(len(x))
    if method == "pca" or (method == "auto" and len(x) > TSNE_MAX_POINTS):
        return PCA(2, random_state=seed).fit_transform(x.double().numpy()), rows, "PCA"
    if len(x) > TSNE_MAX_POINTS:
        rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:TSNE_MAX_POINTS].sort().values
    data = x[rows].double().numpy()
    perplexity = min(30.0, (len(data) - 1) / 3)
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(data), rows, "t-SNE"


def knn_correct(bank: Features, queries: Features, num_classes: int) -> Tensor:
    """Per query, whether its weighted kNN vote among the bank's labelled features is its label."""
    labelled = bank.labels != UNLABELED
    scores = knn_class_scores(queries.features, bank.features[labelled], bank.labels[labelled], num_classes,
                              KNN_K, KNN_TEMPERATURE)
    return scores.argmax(dim=1) == queries.labels


def probe_section(doc: Document, probabilities: np.ndarray, val: Features, spaces: dict[str, Tensor],
                  names: list[str], online: float | None, map_method: str, seed: int, out: Path) -> dict[str, Any]:
    """The linear probe's accuracy per class, its confusion matrix and a 2-D map of the validation set:
    the table, ``probe_per_class.png``, ``confusion.png``, ``embedding_map.png`` and the ``linear_probe`` key."""
    from sklearn.metrics import confusion_matrix

    doc.heading("Linear probe and embedding map")
    labelled = (val.labels != UNLABELED).numpy()
    truth = val.labels.numpy()
    predictions = probabilities.argmax(axis=1)
    matrix = confusion_matrix(truth[labelled], predictions[labelled], labels=list(range(len(names))))
    per_class = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
    accuracy = float((predictions[labelled] == truth[labelled]).mean())
    online_text = f"; the run's online probe (val/probe_acc1): {online:.3f}" if online is not None else ""
    doc.text("A logistic regression (scikit-learn, standardised features) fitted on the frozen backbone features "
             f"of the training images, evaluated on the validation images: **accuracy {accuracy:.3f}**{online_text}.")
    order = np.argsort(per_class, kind="stable")
    shown = order if len(names) <= 30 else order[:15]
    doc.table(["class", "validation images", "accuracy"],
              [[names[c], int(matrix[c].sum()), fmt(float(per_class[c]))] for c in shown])
    if len(names) > 30:
        doc.text("The 15 classes with the lowest accuracy; every class is in report.json.")
    plot_per_class(names, per_class, out / "probe_per_class.png")
    plot_confusion(matrix, names, out / "confusion.png")
    map_space = "embeddings" if "embeddings" in spaces else "features"
    coords, rows, method = two_d_map(spaces[map_space], map_method, seed)
    plot_map(coords, truth[rows.numpy()], names, f"{method} of the validation {map_space}", out / "embedding_map.png")
    doc.figure("probe_per_class.png", "Per-class accuracy of the linear probe")
    doc.figure("confusion.png", "Confusion matrix of the linear probe (rows: true class; colour: row fraction)")
    doc.figure("embedding_map.png", f"{method} of {len(rows)} validation {map_space}, coloured by class")
    return {"linear_probe": {"accuracy": accuracy, "per_class": dict(zip(names, per_class.tolist(), strict=True)),
            "online_probe_val_acc1": online, "map": method}}


def plot_per_class(names: Sequence[str], accuracy: np.ndarray, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names)), 3.5))
    ax.bar(range(len(names)), accuracy)
    if len(names) <= 50:
        ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 12 else 0)
    ax.set(ylim=(0, 1), xlabel="class", ylabel="accuracy", title="Linear probe: per-class validation accuracy")
    save_figure(fig, path)


def plot_confusion(matrix: np.ndarray, names: Sequence[str], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of the true class")
    if len(names) <= 20:
        ax.set_xticks(range(len(names)), names)
        ax.set_yticks(range(len(names)), names)
        for i, j in zip(*np.nonzero(matrix), strict=True):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title="Linear probe: confusion matrix")
    save_figure(fig, path)


def plot_map(coords: np.ndarray, labels: np.ndarray, names: Sequence[str], title: str, path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    scatter = ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap="tab10" if len(names) <= 10 else "tab20", s=8)
    if len(names) <= 20:
        ax.legend(scatter.legend_elements()[0], [names[i] for i in np.unique(labels)], fontsize=7, markerscale=0.8,
                  loc="best")
    ax.set(title=title, xticks=[], yticks=[])
    save_figure(fig, path)
