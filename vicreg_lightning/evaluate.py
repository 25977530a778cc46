"""Offline evaluation of pretrained weights: ``run(cfg) -> metrics``; ``eval.py`` only calls this.

The protocols are VICReg's (Bardes, Ponce, LeCun, ICLR 2022, §5 and Appendix C.2; the official
``evaluate.py``), on the labelled images of a data set's train split, scored on its validation
split:

- **linear**: a linear layer (weights N(0, 0.01), bias 0) on the frozen backbone in eval mode,
  cross-entropy, SGD momentum 0.9, lr 0.02, weight decay 1e-6, batch 256, 100 epochs, cosine
  (per epoch). By default the features of the un-augmented training images are computed once and
  the layer trains on them in seconds; ``train_augment=true`` is the paper's exact protocol:
  random-resized crops and flips, the backbone runs on every batch (digits: 0.931 top-1 in 131 s,
  against 0.944 in 1 s on features).
- **knn**: weighted k-NN (k = 20 and 200, T = 0.07, cosine similarity; :mod:`vicreg_lightning.knn`)
  of the validation features among the training features, also on the expander's embeddings on
  request.
- **semi_supervised**: backbone and linear layer fine-tuned together on a seeded, class-balanced
  1% or 10% of the labelled training images (SimCLR's splits are per-class fractions of ImageNet):
  20 epochs, batch 256, no weight decay, encoder lr 0.03 / head lr 0.08 (1%), 0.01 / 0.1 (10%).

"Random-resized crop and flip" are the training run's own crop scale, ratio and flip probability
(``augment``), without colour, blur or solarisation: on ImageNet with ``augment=official`` that is
the official evaluation's ``RandomResizedCrop(224)`` + ``RandomHorizontalFlip``; on digits it keeps
the mild crops and no flips the digits were trained with. Validation images get the run's
``eval_transform`` (resize, centre crop). Data and augmentations default to the training run's.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Subset

from vicreg_lightning.config import PathsConfig, check_data_sections, require_value
from vicreg_lightning.data.augment import eval_transform, view_transform
from vicreg_lightning.data.catalog import UNLABELED
from vicreg_lightning.data.datamodule import default_num_workers
from vicreg_lightning.data.datasets import Transformed, build_datasets
from vicreg_lightning.errors import ConfigError, DataError, UserError
from vicreg_lightning.export import load_encoder
from vicreg_lightning.knn import knn_class_scores
from vicreg_lightning.run_dir import METRICS_FILE, save_job_config, write_metrics

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------- config


@dataclass
class LinearEvalConfig:
    """``conf/eval/linear.yaml``: the paper's linear protocol."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.02
    weight_decay: float = 1e-6
    momentum: float = 0.9
    init_std: float = 0.01
    train_augment: bool = False


@dataclass
class KNNEvalConfig:
    """``conf/eval/knn.yaml``: k-NN with temperature-weighted votes."""

    k: list[int] = field(default_factory=lambda: [20, 200])
    temperature: float = 0.07
    embeddings: bool = False  # also on the expander's output (eval/knn<k>_embed_acc1)


@dataclass
class SemiSupervisedSplit:
    percent: float = 1.0
    encoder_lr: float = 0.03
    head_lr: float = 0.08


@dataclass
class SemiSupervisedConfig:
    """``conf/eval/semi_supervised.yaml``: fine-tuning on labelled subsets, one per entry of
    ``splits`` (its key is the metric prefix: ``semi1`` → ``eval/semi1_acc1``)."""

    splits: dict[str, SemiSupervisedSplit] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 256
    weight_decay: float = 0.0
    momentum: float = 0.9
    subset_seed: int = 0


@dataclass
class ProtocolsConfig:
    """The ``eval`` group: each protocol present runs."""

    linear: Optional[LinearEvalConfig] = None
    knn: Optional[KNNEvalConfig] = None
    semi_supervised: Optional[SemiSupervisedConfig] = None


@dataclass
class EvalConfig:
    weights: str = MISSING
    arch: Optional[str] = None  # the backbone expected of the weights; None: whichever they hold
    eval: ProtocolsConfig = field(default_factory=ProtocolsConfig)
    # None: the training run's. Checked as train.py checks them, once merged over the run's.
    data: Optional[dict[str, Any]] = None
    augment: Optional[dict[str, Any]] = None
    # What a data preset sets for *training* (data=digits picks a model and a schedule): unused here.
    model: Optional[dict[str, Any]] = None
    optim: Optional[dict[str, Any]] = None
    trainer: Optional[dict[str, Any]] = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "eval"
    seed: int = 0
    device: str = "auto"
    inference_batch_size: int = 256  # images per forward pass when computing features


def check_eval_config(cfg: DictConfig) -> DictConfig:
    """The composed ``conf/eval.yaml`` merged into :class:`EvalConfig`, or a :class:`ConfigError`
    naming the key."""
    if OmegaConf.is_missing(cfg, "weights"):
        raise ConfigError("weights: missing; pass weights=<checkpoint .ckpt, run directory or export folder>")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(EvalConfig), cfg)
    except ConfigKeyError as e:
        raise ConfigError(f"unknown config key '{e.full_key}'") from None
    except ValidationError as e:
        raise ConfigError(f"{e.full_key}: {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', '') or 'config'}: {str(e).splitlines()[0]}") from None
    protocols = typed.eval
    if protocols.linear is None and protocols.knn is None and protocols.semi_supervised is None:
        raise ConfigError("eval: no protocol; choose eval=linear, knn, semi_supervised, all or a list: eval=[linear,knn]")
    if protocols.linear is not None:
        linear = protocols.linear
        _check_sgd("eval.linear", linear.epochs, linear.batch_size, linear.momentum, linear.weight_decay)
        require_value(linear.lr > 0, "eval.linear.lr", linear.lr, "a learning rate > 0")
        require_value(linear.init_std >= 0, "eval.linear.init_std", linear.init_std, "a standard deviation >= 0")
    if protocols.knn is not None:
        knn = protocols.knn
        require_value(len(knn.k) > 0 and all(k >= 1 for k in knn.k), "eval.knn.k", list(knn.k),
                 "a list of neighbour counts >= 1, e.g. [20,200]")
        require_value(knn.temperature > 0, "eval.knn.temperature", knn.temperature, "a temperature > 0")
    if protocols.semi_supervised is not None:
        semi = protocols.semi_supervised
        _check_sgd("eval.semi_supervised", semi.epochs, semi.batch_size, semi.momentum, semi.weight_decay)
        require_value(len(semi.splits) > 0, "eval.semi_supervised.splits", dict(semi.splits), "at least one split")
        for name, split in semi.splits.items():
            key = f"eval.semi_supervised.splits.{name}"
            require_value(0 < split.percent <= 100, f"{key}.percent", split.percent, "a percentage in (0, 100]")
            require_value(split.encoder_lr >= 0 and split.head_lr > 0, f"{key}.head_lr", split.head_lr,
                     "learning rates > 0 (encoder_lr >= 0)")
    require_value(typed.inference_batch_size >= 1, "inference_batch_size", typed.inference_batch_size, "an integer >= 1")
    return typed


def _check_sgd(section: str, epochs: int, batch_size: int, momentum: float, weight_decay: float) -> None:
    require_value(epochs >= 1, f"{section}.epochs", epochs, "an integer >= 1")
    require_value(batch_size >= 2, f"{section}.batch_size", batch_size, "an integer >= 2")
    require_value(0 <= momentum < 1, f"{section}.momentum", momentum, "a number in [0, 1)")
    require_value(weight_decay >= 0, f"{section}.weight_decay", weight_decay, "a number >= 0")


def resolve_data(cfg: DictConfig, info: dict[str, Any]) -> tuple[DictConfig, DictConfig]:
    """The ``data`` and ``augment`` sections to evaluate on: the training run's (``info``, from the
    export's ``vicreg.json`` or the checkpoint's run directory), with what ``cfg`` sets merged over
    them (``data=<option>`` a whole preset, ``+data.root=...`` one key), checked as ``train.py``
    checks them."""
    sections = {}
    for name in ("data", "augment"):
        trained, asked = info.get(name), cfg.get(name)
        asked = OmegaConf.to_container(asked, resolve=True) if asked is not None else {}
        if trained is None and not asked:
            raise ConfigError(
                f"weights={cfg.weights!r}: the training run's {name} is unknown (no .hydra/config.yaml in its run "
                f"directory, no '{name}' in vicreg.json); choose one with {name}=<option>"
            )
        sections[name] = OmegaConf.merge(trained or {}, asked)
    return check_data_sections(sections["data"], sections["augment"])


# ------------------------------------------------------------------------------------------ data


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
    backbone: nn.Module, expander: nn.Module | None, loader: Iterable[tuple[Tensor, Tensor]], device: torch.device
) -> Features:
    """Backbone features, and expander embeddings when ``expander`` is given, of every batch of
    ``loader``, with both modules in eval mode (BatchNorm on running statistics)."""
    backbone.eval()
    if expander is not None:
        expander.eval()
    features, embeddings, labels = [], [], []
    for images, batch_labels in loader:
        f, z = encode(backbone, expander, images.to(device, non_blocking=True))
        features.append(f.cpu())
        if z is not None:
            embeddings.append(z.cpu())
        labels.append(batch_labels)
    return Features(torch.cat(features), torch.cat(embeddings) if embeddings else None, torch.cat(labels))


# ------------------------------------------------------------------------------------- protocols


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


# ------------------------------------------------------------------------------------------- run


def pick_device(name: str, key: str = "device") -> torch.device:
    """The device named by the user's ``key`` (``device=...``, ``--device ...``); ``auto``: CUDA,
    else Apple's MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"{key}={name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r}: no CUDA device here; use {key}=cpu or {key}=auto")
    return device


def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.weights`` with every protocol of ``cfg.eval``; write ``metrics.json`` in
    ``paths.output_dir`` and return the metrics (flat ``{"eval/linear_acc1": ..., ...}``)."""
    composed = cfg
    cfg = check_eval_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    if (output_dir / METRICS_FILE).exists():
        raise ConfigError(f"paths.output_dir={str(output_dir)!r} already holds a finished evaluation; "
                          "choose a new hydra.run.dir")
    save_job_config(composed)
    device = pick_device(cfg.device)
    try:
        backbone, expander, info = load_encoder(cfg.weights, arch=cfg.arch)
    except UserError as e:
        raise UserError(f"weights={e}") from None
    protocols = cfg.eval
    with_embeddings = protocols.knn is not None and protocols.knn.embeddings
    if with_embeddings and expander is None:
        raise UserError(f"weights={cfg.weights!r}: holds no expander.pt; eval.knn.embeddings=true needs one")
    data, augment = resolve_data(cfg, info)
    workers = data.num_workers if data.num_workers >= 0 else default_num_workers()
    metrics: dict[str, float] = {}

    started = time.perf_counter()
    train_raw, val_raw, num_classes = build_datasets(data)
    train_set, train_labels = labelled_part(train_raw, "train", data.name)
    val_set, val_labels = labelled_part(val_raw, "validation", data.name)
    log.info("evaluating %s (%s, %d-d features) on %s: %d labelled training and %d validation images, %d classes",
             cfg.weights, info["arch"], info["feature_dim"], data.name, len(train_labels), len(val_labels), num_classes)
    backbone.to(device)
    expander = expander.to(device) if with_embeddings else None
    eval_images = eval_transform(augment)
    val = extract_features(backbone, expander, make_loader(Transformed(val_set, eval_images),
                                                           cfg.inference_batch_size, workers), device)
    linear_on_features = protocols.linear is not None and not protocols.linear.train_augment
    if protocols.knn is not None or linear_on_features:
        train = extract_features(backbone, expander, make_loader(Transformed(train_set, eval_images),
                                                                 cfg.inference_batch_size, workers), device)
    metrics["eval/features_time_s"] = time.perf_counter() - started

    if protocols.knn is not None:
        started = time.perf_counter()
        spaces = {"": "features"} | ({"_embed": "embeddings"} if with_embeddings else {})
        for suffix, space in spaces.items():
            results = knn_eval(protocols.knn, (getattr(train, space), train.labels), (getattr(val, space), val.labels),
                               num_classes, device)
            for k, result in results.items():
                metrics |= {f"eval/knn{k}{suffix}_{name}": value for name, value in result.items()}
        metrics["eval/knn_time_s"] = time.perf_counter() - started

    if protocols.linear is not None:
        started = time.perf_counter()
        linear = protocols.linear
        if linear_on_features:
            batches = feature_batches(train.features, train.labels, linear.batch_size, cfg.seed)
        else:
            augmented = Transformed(train_set, train_transform(augment))
            batches = frozen_backbone_batches(
                backbone, make_loader(augmented, linear.batch_size, workers, shuffle=True, seed=cfg.seed), device)
        with one_cpu_thread(device) if linear_on_features else contextlib.nullcontext():
            result = linear_eval(linear, batches, val, num_classes, device, cfg.seed)
        metrics |= {f"eval/linear_{name}": value for name, value in result.items()}
        metrics["eval/linear_time_s"] = time.perf_counter() - started

    if protocols.semi_supervised is not None:
        started = time.perf_counter()
        val_loader = make_loader(Transformed(val_set, eval_images), cfg.inference_batch_size, workers)
        results = semi_supervised_eval(
            protocols.semi_supervised, backbone, Transformed(train_set, train_transform(augment)), train_labels,
            val_loader, num_classes, info["feature_dim"], workers, device, cfg.seed,
        )
        for split, result in results.items():
            metrics |= {f"eval/{split}_{name}": value for name, value in result.items()}
        metrics["eval/semi_supervised_time_s"] = time.perf_counter() - started

    output_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(output_dir / METRICS_FILE, metrics)
    summary = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith("_acc1"))
    print(f"Eval metrics ({output_dir / METRICS_FILE}): {summary}")
    return metrics
