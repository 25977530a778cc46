"""The evaluation protocols: linear (on features or on augmented images), weighted k-NN,
semi-supervised fine-tuning."""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from vicreg_lightning.errors import ConfigError
from vicreg_lightning.evaluate.config import KNNEvalConfig, LinearEvalConfig, SemiSupervisedConfig
from vicreg_lightning.evaluate.data import class_balanced_subset
from vicreg_lightning.features import Features, make_loader
from vicreg_lightning.metrics.knn import knn_class_scores


def topk_accuracy(logits: Tensor, labels: Tensor, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits (``k`` clamped to the classes)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    return (top == labels.to(top.device)[:, None]).any(dim=1).float().mean().item()


def linear_head(in_dim: int, num_classes: int, init_std: float) -> nn.Linear:
    """The official evaluation's head: weights N(0, init_std), bias 0."""
    head = nn.Linear(in_dim, num_classes)
    nn.init.normal_(head.weight, std=init_std)
    nn.init.zeros_(head.bias)
    return head


# ``epoch -> (inputs, labels)`` batches of one epoch.
Batches = Callable[[int], Iterable[tuple[Tensor, Tensor]]]


def fit_sgd(
    model: nn.Module,
    param_groups: list[dict[str, Any]],
    batches: Batches,
    epochs: int,
    momentum: float,
    weight_decay: float,
    device: torch.device,
) -> None:
    """Cross-entropy, SGD with momentum, cosine annealing stepped per epoch (official
    ``evaluate.py``). ``batches(epoch)`` yields ``(inputs, labels)`` of one epoch; ``model``
    (and only it) is put in train mode."""
    optimizer = torch.optim.SGD(param_groups, lr=0.0, momentum=momentum, weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    model.train()
    for epoch in range(epochs):
        for inputs, labels in batches(epoch):
            loss = F.cross_entropy(model(inputs.to(device, non_blocking=True)), labels.to(device, non_blocking=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
    model.eval()


def feature_batches(x: Tensor, y: Tensor, batch_size: int, seed: int = 0) -> Batches:
    """``epoch -> (features, labels)`` batches of precomputed features, reshuffled every epoch
    (seeded)."""
    def batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + epoch))
        for index in order.split(batch_size):
            yield x[index], y[index]

    return batches


def frozen_backbone_batches(backbone: nn.Module, loader: DataLoader, device: torch.device) -> Batches:
    """``epoch -> (features, labels)`` batches computed by ``backbone`` in eval mode, without
    gradient, from every batch of ``loader`` (augmented images: new crops every epoch)."""
    def batches(epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        backbone.eval()
        for images, labels in loader:
            with torch.no_grad():
                features = backbone(images.to(device, non_blocking=True))
            yield features, labels

    return batches


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run a linear layer's training on precomputed features in one CPU thread: its matrices
    (batch × features × classes) are too small for intra-op parallelism to pay, and on a busy
    machine (pytest-xdist workers, other jobs) the threads' synchronisation made it 10× slower."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def _logits(model: nn.Module, x: Tensor, device: torch.device, chunk: int = 4096) -> Tensor:
    return torch.cat([model(part.to(device)).float().cpu() for part in x.split(chunk)])


def linear_eval(
    cfg: LinearEvalConfig, batches: Batches, val: Features, num_classes: int, device: torch.device, seed: int = 0
) -> dict[str, float]:
    """Top-1/top-5 on ``val`` of a linear layer trained on frozen features: ``batches`` from
    :func:`feature_batches` (computed once) or :func:`frozen_backbone_batches` (augmented)."""
    torch.manual_seed(seed)
    head = linear_head(val.features.shape[1], num_classes, cfg.init_std).to(device)
    fit_sgd(head, [{"params": head.parameters(), "lr": cfg.lr}], batches, cfg.epochs, cfg.momentum,
            cfg.weight_decay, device)
    logits = _logits(head, val.features, device)
    return {"acc1": topk_accuracy(logits, val.labels, 1), "acc5": topk_accuracy(logits, val.labels, 5)}


def knn_eval(cfg: KNNEvalConfig, train: tuple[Tensor, Tensor], val: tuple[Tensor, Tensor], num_classes: int,
             device: torch.device) -> dict[int, dict[str, float]]:
    """Top-1/top-5 of weighted k-NN of ``val = (features, labels)`` among ``train``, for each ``k``
    of ``cfg.k``: ``{k: {"acc1", "acc5"}}``."""
    bank, bank_labels = train[0].to(device), train[1].to(device)
    if max(cfg.k) > len(bank):  # torch.topk would refuse; a smaller bank is a data set's property
        raise ConfigError(f"eval.knn.k={max(cfg.k)}: more neighbours than the {len(bank)} labelled training images; "
                          f"give values of at most {len(bank)}")
    results = {}
    for k in cfg.k:
        scores = knn_class_scores(val[0], bank, bank_labels, num_classes, k=k, temperature=cfg.temperature).cpu()
        results[k] = {"acc1": topk_accuracy(scores, val[1], 1), "acc5": topk_accuracy(scores, val[1], 5)}
    return results


def semi_supervised_eval(
    cfg: SemiSupervisedConfig,
    backbone: nn.Module,
    train_set: Dataset,
    train_labels: Tensor,
    val_loader: DataLoader,
    num_classes: int,
    feature_dim: int,
    workers: int,
    device: torch.device,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """Top-1/top-5 after fine-tuning a copy of ``backbone`` and a linear head on each split of
    ``cfg.splits`` (class-balanced subsets of ``train_set``, whose images are augmented):
    ``{name: {"acc1", "acc5", "images"}}``. BatchNorm trains with the rest, as officially."""
    results = {}
    for name, split in cfg.splits.items():
        indices = class_balanced_subset(train_labels, split.percent, cfg.subset_seed)
        torch.manual_seed(seed)
        encoder = copy.deepcopy(backbone)
        head = linear_head(feature_dim, num_classes, init_std=0.01)
        model = nn.Sequential(encoder, head).to(device)
        groups = [{"params": head.parameters(), "lr": split.head_lr}]
        if split.encoder_lr > 0:
            groups.append({"params": encoder.parameters(), "lr": split.encoder_lr})
        else:
            encoder.requires_grad_(False)
        # Train-mode BatchNorm cannot normalise a last batch of one image.
        loader = make_loader(Subset(train_set, indices.tolist()), cfg.batch_size, workers, shuffle=True, seed=seed,
                             drop_last=len(indices) % cfg.batch_size == 1)
        fit_sgd(model, groups, lambda epoch, loader=loader: loader, cfg.epochs, cfg.momentum, cfg.weight_decay, device)
        logits, labels = [], []
        with torch.no_grad():
            for images, batch_labels in val_loader:
                logits.append(model(images.to(device, non_blocking=True)).float().cpu())
                labels.append(batch_labels)
        logits_all, labels_all = torch.cat(logits), torch.cat(labels)
        results[name] = {"acc1": topk_accuracy(logits_all, labels_all, 1),
                         "acc5": topk_accuracy(logits_all, labels_all, 5), "images": float(len(indices))}
    return results
