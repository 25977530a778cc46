"""Offline evaluation without a run: k-NN against a brute-force reference, temperature-weighted
votes, the linear protocol on separable features, the class-balanced subset and unlabelled images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.runs import ROOT
from vicreg_lightning.data.datasets import TensorImages
from vicreg_lightning.errors import ConfigError, DataError
from vicreg_lightning.evaluate import (
    KNNEvalConfig,
    class_balanced_subset,
    feature_batches,
    knn_eval,
    labelled_part,
    linear_eval,
    one_cpu_thread,
)
from vicreg_lightning.features import Features
from vicreg_lightning.metrics.knn import knn_class_scores


def knn_reference(queries: np.ndarray, bank: np.ndarray, labels: np.ndarray, num_classes: int, k: int,
                  temperature: float) -> np.ndarray:
    """Weighted k-NN written out sample by sample in float64."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    scores = np.zeros((len(queries), num_classes))
    for i, q in enumerate(queries):
        sims = bank @ (q / np.linalg.norm(q))
        for j in np.argsort(-sims)[:k]:
            scores[i, labels[j]] += np.exp(sims[j] / temperature)
    return scores


@pytest.mark.parametrize("k", [1, 5, 20, 500])
def test_knn_matches_brute_force_reference(k):
    rng = np.random.default_rng(0)
    queries, bank = rng.normal(size=(37, 8)), rng.normal(size=(113, 8))
    labels = rng.integers(0, 5, size=113)
    # Small chunks: the running top-k must merge across 12 bank chunks and 6 query chunks.
    scores = knn_class_scores(torch.from_numpy(queries).float(), torch.from_numpy(bank).float(),
                              torch.from_numpy(labels), 5, k=k, temperature=0.07, query_chunk_size=7,
                              bank_chunk_size=10)
    expected = knn_reference(queries, bank, labels, 5, min(k, 113), 0.07)
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-4)
    assert (scores.argmax(1).numpy() == expected.argmax(1)).all()


def test_more_neighbours_than_training_images_is_refused_naming_k_and_the_bank():
    train = (torch.randn(6, 4), torch.tensor([0, 1, 2, 0, 1, 2]))
    val = (torch.randn(3, 4), torch.tensor([0, 1, 2]))
    cfg = KNNEvalConfig(k=[6], temperature=0.07, embeddings=False)
    assert set(knn_eval(cfg, train, val, 3, torch.device("cpu"))) == {6}  # k equal to the bank: every image votes
    cfg.k = [2, 7]
    with pytest.raises(ConfigError, match=r"^eval.knn.k=7: more neighbours than the 6 labelled training images; "
                                          r"give values of at most 6$"):
        knn_eval(cfg, train, val, 3, torch.device("cpu"))


def test_knn_votes_are_weighted_by_temperature():
    """One close neighbour of class 0 against two farther ones of class 1 (k=3): at T=0.07 the
    close one outweighs both (exp(0.99/T) >> 2 exp(0.6/T)); at a large T the vote is a majority."""
    query = torch.tensor([[1.0, 0.0]])
    bank = torch.tensor([[0.99, (1 - 0.99**2) ** 0.5], [0.6, 0.8], [0.6, -0.8], [-1.0, 0.0]])
    labels = torch.tensor([0, 1, 1, 0])
    assert knn_class_scores(query, bank, labels, 2, k=3, temperature=0.07).argmax().item() == 0
    assert knn_class_scores(query, bank, labels, 2, k=3, temperature=100.0).argmax().item() == 1
    scores = knn_class_scores(query, bank, labels, 2, k=3, temperature=0.07)
    assert scores[0, 0].item() == pytest.approx(np.exp(0.99 / 0.07), rel=1e-4)
    assert scores[0, 1].item() == pytest.approx(2 * np.exp(0.6 / 0.07), rel=1e-4)


def test_linear_eval_separates_separable_features():
    """The paper's protocol (lr 0.02, 100 epochs, N(0, 0.01) head) on three well separated
    Gaussian clusters in 64-d, as precomputed features."""
    generator = torch.Generator().manual_seed(0)
    centres = 3 * torch.randn(3, 64, generator=generator)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % 3
        return centres[labels] + torch.randn(n, 64, generator=generator), labels

    (train_x, train_y), (val_x, val_y) = sample(300), sample(90)
    cfg, cpu = OmegaConf.load(ROOT / "conf" / "eval" / "linear.yaml").linear, torch.device("cpu")
    with one_cpu_thread(cpu):
        result = linear_eval(cfg, feature_batches(train_x, train_y, cfg.batch_size), Features(val_x, None, val_y), 3,
                             cpu)
    assert result["acc1"] >= 0.99 and result["acc5"] == 1.0


def test_class_balanced_subset_is_seeded_and_balanced():
    labels = torch.arange(1000) % 10
    one = class_balanced_subset(labels, 1, seed=0)
    ten = class_balanced_subset(labels, 10, seed=0)
    assert torch.bincount(labels[one]).tolist() == [1] * 10 and torch.bincount(labels[ten]).tolist() == [10] * 10
    assert torch.equal(one, class_balanced_subset(labels, 1, seed=0))
    assert not torch.equal(ten, class_balanced_subset(labels, 10, seed=1))
    # A rare class keeps at least one image.
    assert 999 in class_balanced_subset(torch.cat([torch.zeros(999, dtype=torch.long), torch.ones(1, dtype=torch.long)]),
                                        1, seed=0)


def test_unlabelled_images_are_left_out_and_none_is_refused():
    images = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    part, labels = labelled_part(TensorImages(images, torch.tensor([3, -1, 1, -1])), "train", "stl10")
    assert len(part) == 2 and labels.tolist() == [3, 1]
    with pytest.raises(DataError, match="data=stl10: the train split has no labelled image"):
        labelled_part(TensorImages(images, torch.full((4,), -1)), "train", "stl10")
