"""Classifiers and maps on frozen features: the linear probe (a scikit-learn logistic regression),
the weighted kNN classifier of the stability section, and the 2-D map of the embeddings (t-SNE, or
PCA above :data:`TSNE_MAX_POINTS` points)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from vicreg_lightning.data.catalog import UNLABELED
from vicreg_lightning.features import Features
from vicreg_lightning.metrics.knn import knn_class_scores

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


def _knn_correct(bank: Features, queries: Features, num_classes: int) -> Tensor:
    labelled = bank.labels != UNLABELED
    scores = knn_class_scores(queries.features, bank.features[labelled], bank.labels[labelled], num_classes,
                              KNN_K, KNN_TEMPERATURE)
    return scores.argmax(dim=1) == queries.labels
