"""Encoding a data set in eval mode, batch by batch: the feature extraction that the evaluation,
the report, the k-NN monitor and the health check share. (The linear protocol on augmented images
and the invariance audit run the frozen backbone on each batch of their own loops.)"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:
    from lightning.pytorch.plugins.precision import Precision


def make_loader(dataset: Dataset, batch_size: int, workers: int, shuffle: bool = False, seed: int = 0,
                drop_last: bool = False) -> DataLoader:
    """The evaluations' loader. Its generator, seeded by ``seed``, draws the shuffling and the
    workers' seeds, which drive random transforms: the same order and the same draws for any
    number of workers. Shuffled loaders are the training ones, read once per epoch: their workers
    are kept (starting them every epoch cost more than the epochs of a small set's fine-tuning)."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=torch.Generator().manual_seed(seed),
                      drop_last=drop_last, num_workers=workers, persistent_workers=shuffle and workers > 0,
                      pin_memory=torch.cuda.is_available())


class Features(NamedTuple):
    """What the frozen encoder makes of a data set, as float32 CPU tensors, in loader order."""

    features: Tensor  # backbone output (N, feature_dim)
    embeddings: Tensor | None  # expander output (N, embedding_dim), when asked for
    labels: Tensor

    def space(self, name: str) -> Tensor | None:
        """``"features"`` or ``"embeddings"``."""
        return self.features if name == "features" else self.embeddings


def encode(backbone: nn.Module, expander: nn.Module | None, images: Tensor) -> tuple[Tensor, Tensor | None]:
    """Backbone features and, when ``expander`` is given, expander embeddings of one batch, float32."""
    features = backbone(images)
    return features.float(), None if expander is None else expander(features).float()


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    expander: nn.Module | None,
    loader: Iterable[tuple[Tensor, Tensor]],
    device: torch.device,
    precision: Precision | None = None,
    on_device: bool = False,
) -> Features:
    """Backbone features, and expander embeddings when ``expander`` is given, of every batch of
    ``loader``, with both modules in eval mode (BatchNorm on running statistics; their modes are
    restored after). ``precision``: a Trainer's precision plugin (autocast as in training);
    ``on_device``: keep the results on ``device`` instead of moving them to the CPU."""
    modules = [module for module in (backbone, expander) if module is not None]
    modes = {m: m.training for module in modules for m in module.modules()}
    keep = (lambda t: t) if on_device else (lambda t: t.cpu())
    features, embeddings, labels = [], [], []
    try:
        for module in modules:
            module.eval()
        for images, batch_labels in loader:
            images = images.to(device, non_blocking=True)
            if precision is None:
                f, z = encode(backbone, expander, images)
            else:
                with precision.forward_context():
                    f, z = encode(backbone, expander, precision.convert_input(images))
            features.append(keep(f))
            if z is not None:
                embeddings.append(keep(z))
            labels.append(batch_labels.to(device) if on_device else batch_labels)
    finally:
        for m, training in modes.items():
            m.train(training)
    return Features(torch.cat(features), torch.cat(embeddings) if embeddings else None, torch.cat(labels))
