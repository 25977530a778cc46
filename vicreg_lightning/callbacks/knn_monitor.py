"""KNNMonitor: weighted k-NN top-1 (:func:`vicreg_lightning.metrics.knn.knn_class_scores`) of the
validation images among training images, measured during pretraining."""

from __future__ import annotations

import math

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from vicreg_lightning.data.catalog import UNLABELED
from vicreg_lightning.data.datamodule import default_num_workers, ignore_stop_signals, worker_start_method
from vicreg_lightning.data.datasets import Transformed
from vicreg_lightning.features import extract_features
from vicreg_lightning.metrics.knn import knn_class_scores


class KNNMonitor(pl.Callback):
    """Log ``val/knn_acc1``, the 20-NN top-1 accuracy of the backbone features, during pretraining.

    The bank is a fixed sample of at most ``max_train_samples`` training images (seeded, the same
    at every check), seen through the datamodule's *validation* transform (resize and centre crop,
    no augmentation) rather than the training loader's two augmented views; the queries are the
    validation set (its first ``max_val_samples`` images when set). Unlabelled images (label -1,
    STL-10's unlabeled split) are dropped from both, so on STL-10 the bank holds the labelled
    fraction of the sample. Needs a :class:`~vicreg_lightning.data.datamodule.VICRegDataModule`
    (its ``train_set`` and ``val_set``) and a module with ``.backbone``.

    Every ``every_n_epochs`` epochs, after validation, the backbone runs in eval mode (BatchNorm on
    running statistics) under ``torch.no_grad()`` in the trainer's precision; the modes are restored
    after. The value lands in ``trainer.callback_metrics``, hence in the loggers and ``metrics.json``.

    Under DDP every rank embeds its share of the bank and of the queries (every image on exactly one
    rank): the bank is all-gathered, each rank classifies its queries against the whole bank, and
    the correct and labelled counts are summed over ranks, so the accuracy is that of one process.
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        k: int = 20,
        temperature: float = 0.07,
        max_train_samples: int = 10_000,
        max_val_samples: int | None = None,
        batch_size: int = 256,
        seed: int = 0,
    ) -> None:
        super().__init__()
        for name, value in (("every_n_epochs", every_n_epochs), ("k", k), ("max_train_samples", max_train_samples),
                            ("batch_size", batch_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: must be an int >= 1")
        if max_val_samples is not None and (not isinstance(max_val_samples, int) or max_val_samples < 1):
            raise ValueError(f"max_val_samples={max_val_samples!r}: must be an int >= 1, or None for all")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature={temperature!r}: must be a finite number > 0")
        self.every_n_epochs = every_n_epochs
        self.k = k
        self.temperature = float(temperature)
        self.max_train_samples = max_train_samples
        self.max_val_samples = max_val_samples
        self.batch_size = batch_size
        self.seed = seed

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not isinstance(getattr(pl_module, "backbone", None), torch.nn.Module) or not hasattr(pl_module, "feature_dim"):
            raise TypeError(f"KNNMonitor needs a module with .backbone (images -> features) and .feature_dim; "
                            f"{type(pl_module).__name__} lacks them")

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        datamodule = trainer.datamodule
        if getattr(datamodule, "train_set", None) is None or getattr(datamodule, "val_set", None) is None:
            raise TypeError("KNNMonitor needs trainer.datamodule with train_set and val_set (a VICRegDataModule)")
        raw_train: Dataset = datamodule.train_set.dataset
        val: Dataset = datamodule.val_set
        # In the data set's order: the votes then match an offline k-NN over the same images exactly,
        # as a near-tie between neighbours is broken by their order.
        bank_indices = np.sort(np.random.default_rng(self.seed).permutation(len(raw_train))[: self.max_train_samples])
        bank_set = Transformed(Subset(raw_train, bank_indices.tolist()), val.transform)
        val_indices = range(min(len(val), self.max_val_samples or len(val)))

        rank, world = trainer.global_rank, trainer.world_size
        bank_positions = torch.arange(rank, len(bank_set), world, device=pl_module.device)
        bank, bank_labels = self._embed(trainer, pl_module, Subset(bank_set, bank_positions.tolist()))
        queries, query_labels = self._embed(trainer, pl_module, Subset(val, val_indices[rank::world]))
        bank, bank_labels = self._gather(pl_module, bank, bank_labels, bank_positions, -(-len(bank_set) // world))

        counts = torch.zeros(2, device=pl_module.device)  # correct, labelled
        labelled = query_labels != UNLABELED
        if len(bank) and labelled.any():
            num_classes = int(bank_labels.max()) + 1
            scores = knn_class_scores(queries[labelled], bank, bank_labels, num_classes, self.k, self.temperature)
            counts[0] = (scores.argmax(dim=1) == query_labels[labelled]).sum()
            counts[1] = labelled.sum()
        counts = trainer.strategy.reduce(counts, reduce_op="sum")
        if not len(bank) or counts[1] == 0:
            rank_zero_warn("KNNMonitor: no labelled training or validation images; val/knn_acc1 not logged")
            return
        # The same value on every rank (the counts are summed above): nothing left to synchronise.
        pl_module.log("val/knn_acc1", counts[0] / counts[1], on_epoch=True, sync_dist=False, batch_size=1)

    def _embed(self, trainer: pl.Trainer, pl_module: pl.LightningModule, dataset: Dataset) -> tuple[Tensor, Tensor]:
        """Backbone features (float32) and labels of ``dataset``, on the module's device."""
        if len(dataset) == 0:  # fewer images than ranks: this rank has none
            return (torch.zeros(0, pl_module.feature_dim, device=pl_module.device),
                    torch.zeros(0, dtype=torch.long, device=pl_module.device))
        workers = trainer.datamodule.data_cfg.num_workers
        workers = workers if workers >= 0 else default_num_workers()
        loader = DataLoader(dataset, batch_size=self.batch_size, worker_init_fn=ignore_stop_signals,
                            generator=torch.Generator().manual_seed(self.seed), num_workers=workers,
                            multiprocessing_context=worker_start_method(workers))
        encoded = extract_features(pl_module.backbone, None, loader, pl_module.device,
                                   precision=trainer.precision_plugin, on_device=True)
        return encoded.features, encoded.labels

    @staticmethod
    def _gather(pl_module: pl.LightningModule, features: Tensor, labels: Tensor, positions: Tensor, rows: int
                ) -> tuple[Tensor, Tensor]:
        """The labelled rows of every rank's ``features``, in the order of their ``positions`` in the
        bank: each rank pads its share to ``rows`` (the largest share) for ``all_gather``; the
        padding carries the unlabelled mark and goes with the unlabelled images."""
        padded = features.new_zeros(rows, features.shape[1])
        padded[: len(features)] = features
        padded_labels = labels.new_full((rows,), UNLABELED)
        padded_labels[: len(labels)] = labels
        padded_positions = positions.new_full((rows,), -1)
        padded_positions[: len(positions)] = positions
        # Lightning adds a leading world dimension under DDP only.
        all_features = pl_module.all_gather(padded).reshape(-1, features.shape[1])
        all_labels = pl_module.all_gather(padded_labels).reshape(-1)
        all_positions = pl_module.all_gather(padded_positions).reshape(-1)
        keep = torch.nonzero(all_labels != UNLABELED).squeeze(1)
        keep = keep[all_positions[keep].argsort()]
        return all_features[keep], all_labels[keep]
