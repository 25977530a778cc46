"""Representation report of a pretrained encoder.

``python -m vicreg_lightning.report <checkpoint, run dir or export dir> [--data NAME] [--out DIR]``

Writes a folder with PNG figures, ``report.md``, ``report.html`` (the same, images inlined) and
``report.json`` (every number). By default the evaluation uses the data set and augmentation recipe
of the training run (``<run dir>/.hydra/config.yaml``); validation images go through the run's
``eval_transform``, training images (for the linear probe and the kNN bank) too.

1. **Spectrum and health.** Singular values of the backbone features and of the expander
   embeddings on the validation set, RankMe (Garrido, Balestriero, Najman, LeCun, ICML 2023), the
   per-dimension std (what VICReg's variance term pushes to 1; Bardes, Ponce, LeCun, ICLR 2022) and
   a block of the embeddings' correlation matrix (what its covariance term pushes to 0). The
   numbers are :mod:`vicreg_lightning.health`'s.
2. **Linear probe.** A logistic regression (scikit-learn) fitted on frozen backbone features of
   the training split, evaluated on the validation split: per-class accuracy and the confusion
   matrix (the checkpoint's online probe, ``val/probe_acc1``, is quoted beside it when the run has
   a ``metrics.json``). A 2-D map of the validation embeddings coloured by class: t-SNE (van der
   Maaten and Hinton, JMLR 2008) up to :data:`TSNE_MAX_POINTS` points, PCA above.
3. **What counts as "same".** The training recipe, and per augmentation family a measured
   invariance score (:func:`invariance`, :func:`measure_invariance`), for the encoder and for an
   untrained encoder of the same architecture, in the spirit of Ericsson, Gouk and Hospedales,
   "Why do self-supervised models transfer? Investigating the impact of invariance on downstream
   tasks" (arXiv:2111.11398).
4. **Stability across groups and domains.** Per group (the classes; with ``--domain``, another
   data set as one more group): RankMe at equal sample count, kNN accuracy, and the Fréchet
   distance between Gaussians fitted to the group's features and to the rest's
   (:func:`frechet_distance`), flagged by :func:`outlier_flags`.

Scaling: features are extracted batch by batch on the chosen device (``--device``, CUDA when
available; the spectra and group distances are computed there too on CUDA); every split is capped
at ``--max-samples`` images (a seeded random subset), the invariance measurement at
``--invariance-samples``, t-SNE at :data:`TSNE_MAX_POINTS`. No matrix is larger than ``D×D`` or
``N×N`` for the capped ``N``.
"""

from __future__ import annotations

import argparse
import base64
import html
import json
import math
import re
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from vicreg_lightning.cli import user_errors_exit
from vicreg_lightning.config import check_data_sections
from vicreg_lightning.data.augment import eval_transform, view_transform
from vicreg_lightning.data.catalog import UNLABELED
from vicreg_lightning.data.datasets import Transformed, build_datasets
from vicreg_lightning.errors import UserError
from vicreg_lightning.evaluate import Features, encode, extract_features, make_loader, pick_device
from vicreg_lightning.export import load_encoder
from vicreg_lightning.health import CONSTANT_RTOL, mean_abs_offdiag_corr, rankme, std_stats
from vicreg_lightning.models import build_backbone, build_expander

# The augmentation families of the recipe (vicreg_lightning.data.augment.view_transform), in its order.
FAMILIES: tuple[str, ...] = ("crop", "flip", "jitter", "grayscale", "blur", "solarize")
SPACES: tuple[str, ...] = ("features", "embeddings")
FIGURES: tuple[str, ...] = (
    "spectrum.png", "std_hist.png", "correlation.png", "probe_per_class.png", "confusion.png",
    "embedding_map.png", "invariance.png", "groups.png",
)
# t-SNE is O(N²) in memory and slow above a few thousand points; PCA maps any number.
TSNE_MAX_POINTS = 2000
CORRELATION_BLOCK = 64
# The same std threshold as the health callback's default: a tenth of VICReg's target std of 1.
STD_THRESHOLD = 0.1
# kNN classifier of Wu et al. (CVPR 2018) as DINO evaluates it (Caron et al., ICCV 2021).
KNN_K = 20
KNN_TEMPERATURE = 0.07
OUTLIER_NUM_STD = 2.0


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class LoadedEncoder:
    """An encoder to report on (modules in eval mode), the run's checked ``data`` and ``augment``
    sections, and ``info``: what the loader knows of the weights (``vicreg.json``'s keys: ``arch``,
    ``small_stem``, ``zero_init_residual``, ``expander``, ``metrics``, ...)."""

    backbone: nn.Module
    expander: nn.Module | None
    data: DictConfig
    augment: DictConfig
    info: dict[str, Any]
    source: Path
    loaded_with: str

    @property
    def run_dir(self) -> Path | None:
        """The training run directory the weights were given in (not the one an export came from)."""
        if self.source.is_file():
            return _run_dir_of(self.source)
        return self.source if (self.source / ".hydra" / "config.yaml").is_file() else None


def _run_dir_of(checkpoint: Path) -> Path | None:
    # <run dir>/checkpoints/*.ckpt, or Lightning's SLURM hpc_ckpt_*.ckpt in the run directory itself.
    for folder in (checkpoint.parent.parent, checkpoint.parent):
        if (folder / ".hydra" / "config.yaml").is_file():
            return folder
    return None


def _checked_sections(info: dict[str, Any], source: Path, data_name: str | None, data_root: str | None
                      ) -> tuple[DictConfig, DictConfig]:
    """The run's ``data`` and ``augment``, with ``--data``/``--data-root`` over them, checked as
    ``train.py`` checks them."""
    if not info.get("data") or not info.get("augment"):
        raise UserError(
            f"{str(source)!r}: the training run's data and augmentation recipe are unknown (no .hydra/config.yaml "
            "in its run directory, none in vicreg.json); pass a checkpoint inside its run directory"
        )
    data = OmegaConf.merge(info["data"], {k: v for k, v in (("name", data_name), ("root", data_root)) if v})
    return check_data_sections(data, info["augment"])


def load_for_report(source: Path, data_name: str | None = None, data_root: str | None = None) -> LoadedEncoder:
    """Load a training checkpoint (``.ckpt``), a run directory (its ``checkpoints/last.ckpt``) or an
    export folder, with the run's data and augmentation config (``data_name``/``data_root`` replace
    ``data.name``/``data.root``). Bad input raises :class:`UserError`, one line."""
    try:
        if not source.exists():
            raise UserError(
                f"{str(source)!r}: no such file or directory; pass <run dir>/checkpoints/last.ckpt, a run directory "
                "or an export folder"
            )
        backbone, expander, info = load_encoder(source)
        loaded_with = "vicreg_lightning.export.load_encoder"
        data, augment = _checked_sections(info, source, data_name, data_root)
    except OSError as e:  # unreadable: permissions, a broken mount
        raise UserError(f"{str(source)!r}: cannot be read ({e.strerror or e})") from None
    backbone.eval()
    if expander is not None:
        expander.eval()
    return LoadedEncoder(backbone, expander, data, augment, dict(info), source, loaded_with)


def untrained_twin(info: dict[str, Any], seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """A randomly initialised backbone and expander of the architecture ``info`` describes
    (``arch``, ``small_stem``, ``zero_init_residual``, ``expander``), seeded, in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone, feature_dim = build_backbone(info["arch"], bool(info["small_stem"]),
                                               info.get("zero_init_residual", True))
        expander = build_expander(feature_dim, info["expander"])
    return backbone.eval(), expander.eval()


# ---------------------------------------------------------------------------------------------- features


def extract(
    backbone: nn.Module, expander: nn.Module | None, dataset: Dataset, device: torch.device,
    batch_size: int = 256, num_workers: int = 0,
) -> Features:
    """Features and embeddings of ``(image, label)`` samples, batch by batch on ``device`` (eval
    mode: BatchNorm on running statistics, so the batching changes nothing)."""
    backbone.to(device)
    if expander is not None:
        expander.to(device)
    return extract_features(backbone, expander, make_loader(dataset, batch_size, num_workers), device)


def capped(dataset: Dataset, max_samples: int, seed: int) -> Dataset:
    """At most ``max_samples`` of ``dataset``: a seeded random subset, in index order."""
    size = len(dataset)  # type: ignore[arg-type]
    if size <= max_samples:
        return dataset
    chosen = torch.randperm(size, generator=torch.Generator().manual_seed(seed))[:max_samples]
    return Subset(dataset, chosen.sort().values.tolist())


# ---------------------------------------------------------------------------------------------- invariance


@dataclass
class RecipeEntry:
    """One augmentation family in the training recipe: used at all (probability > 0 in a view), how
    often, and its parameters."""

    family: str
    trained: bool
    probability: str
    parameters: str


def training_recipe(aug: Any) -> list[RecipeEntry]:
    """The families of an ``augment`` config as :func:`view_transform` applies them."""
    crop_scale, crop_ratio = tuple(aug.crop_scale), tuple(aug.crop_ratio)
    # The crop is always applied; it is an augmentation unless it keeps the whole image.
    crop_trained = crop_scale != (1.0, 1.0)
    views = (aug.view_a, aug.view_b)
    return [
        RecipeEntry("crop", crop_trained, "1 (both views)",
                    f"scale {crop_scale[0]:g}-{crop_scale[1]:g}, ratio {crop_ratio[0]:.3g}-{crop_ratio[1]:.3g}, "
                    f"to {aug.size} px"),
        RecipeEntry("flip", aug.hflip_prob > 0, f"{aug.hflip_prob:g} (both views)", "horizontal"),
        RecipeEntry("jitter", aug.jitter_prob > 0, f"{aug.jitter_prob:g} (both views)",
                    f"brightness {aug.brightness:g}, contrast {aug.contrast:g}, saturation {aug.saturation:g}, "
                    f"hue {aug.hue:g}"),
        RecipeEntry("grayscale", aug.grayscale_prob > 0, f"{aug.grayscale_prob:g} (both views)", ""),
        RecipeEntry("blur", any(v.blur_prob > 0 for v in views),
                    f"view a {views[0].blur_prob:g}, view b {views[1].blur_prob:g}",
                    f"sigma {aug.blur_sigma[0]:g}-{aug.blur_sigma[1]:g}, kernel {aug.blur_kernel_size}"),
        RecipeEntry("solarize", any(v.solarize_prob > 0 for v in views),
                    f"view a {views[0].solarize_prob:g}, view b {views[1].solarize_prob:g}",
                    f"threshold {aug.solarize_threshold}"),
    ]


def single_family_view(aug: Any, family: str | None) -> Callable[[Tensor], Tensor]:
    """The training pipeline (:func:`view_transform`) with every family off but ``family``, which
    is applied with probability 1 and the recipe's parameters.

    Every family off (``family=None``) is the reference view: the whole image — the largest centred
    square, deterministically — resized to ``aug.size``. The ``crop`` family replaces it with the
    recipe's random resized crop; the photometric families act on the reference view, at the
    training resolution, as in training.
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"family={family!r}: choose one of {', '.join(FAMILIES)}")
    on = {name: 1.0 if name == family else 0.0 for name in FAMILIES}
    # Scale 1 and ratio 1: RandomResizedCrop takes the largest centred square, with no randomness.
    crop = {} if family == "crop" else {"crop_scale": [1.0, 1.0], "crop_ratio": [1.0, 1.0]}
    single = OmegaConf.merge(aug, {
        **crop, "hflip_prob": on["flip"], "jitter_prob": on["jitter"], "grayscale_prob": on["grayscale"],
    })
    view = OmegaConf.create({"blur_prob": on["blur"], "solarize_prob": on["solarize"]})
    return view_transform(single, view)


class _ReferenceAndFamily:
    """``image -> (reference view, view with one family)``."""

    def __init__(self, aug: Any, family: str) -> None:
        self.reference, self.family = single_family_view(aug, None), single_family_view(aug, family)

    def __call__(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.reference(image), self.family(image)


@dataclass
class InvarianceScore:
    """See :func:`invariance`."""

    sim_same: float
    sim_unrelated: float
    score: float


def invariance(reference: Tensor, transformed: Tensor) -> InvarianceScore:
    """Invariance of a representation ``f`` to a transform ``T``, from ``f(x_i)`` and ``f(T(x_i))``
    (row i of ``reference`` and ``transformed``) for ``N ≥ 2`` images::

        c(v)          = v − 1/N · Σ_j f(x_j)                      (centred on the images' mean)
        sim_same      = 1/N · Σ_i cos(c(f(x_i)), c(f(T(x_i))))
        sim_unrelated = 1/(N(N−1)) · Σ_{i≠j} cos(c(f(x_i)), c(f(x_j)))
        invariance    = (sim_same − sim_unrelated) / (1 − sim_unrelated)

    1: every ``f(T(x))`` equals ``f(x)`` up to scale about the mean (fully invariant); 0: a
    transformed image is on average no closer to its original than another image of the set is (an
    unrelated image, of any class); negative: further.

    Why centred: the component every image shares (ReLU features are all non-negative, and an
    untrained network maps all images close to one direction: uncentred cosines of unrelated
    images near 0.9) says nothing about which image it is, yet dominates an uncentred cosine and
    makes any encoder look invariant. Centring removes it; ``sim_unrelated`` is then close to 0 and
    the normalisation keeps the scale "1 = identical, 0 = as far as an unrelated image" exact.
    Cosines are taken in float64; the unrelated mean runs over all ordered pairs ``i ≠ j``
    (exact, through ``‖Σ_i u_i‖² − Σ_i ‖u_i‖²`` for unit vectors ``u``). NaN when the reference
    has no spread (a collapsed representation: nothing to measure against).
    """
    if reference.shape != transformed.shape or reference.ndim != 2 or reference.shape[0] < 2:
        raise ValueError(
            f"expected two (N >= 2, D) matrices of the same shape; got {tuple(reference.shape)} and "
            f"{tuple(transformed.shape)}"
        )
    reference, transformed = reference.double(), transformed.double()
    mean = reference.mean(dim=0)
    centred = reference - mean
    # As health.mean_abs_offdiag_corr: a spread below float32 rounding of the values is no spread.
    if centred.square().sum().sqrt() <= CONSTANT_RTOL * reference.square().sum().sqrt():
        return InvarianceScore(math.nan, math.nan, math.nan)
    ref = F.normalize(centred, dim=1)
    trans = F.normalize(transformed - mean, dim=1)
    n = ref.shape[0]
    sim_same = float((ref * trans).sum(dim=1).mean())
    total = ref.sum(dim=0)
    sim_unrelated = float((total @ total - ref.square().sum()) / (n * (n - 1)))
    return InvarianceScore(sim_same, sim_unrelated, (sim_same - sim_unrelated) / (1.0 - sim_unrelated))


@dataclass
class FamilyInvariance:
    """One family's :func:`invariance` per representation space, and how much the transform changed
    the input (mean absolute difference of the normalised pixels: 0 is a transform that does nothing
    to these images, e.g. grayscale on grey images)."""

    family: str
    input_change: float
    scores: dict[str, InvarianceScore]


Encoder = tuple[nn.Module, nn.Module | None]  # (backbone, expander or None)


@torch.no_grad()
def measure_invariance(
    encoders: Mapping[str, Encoder], images: Dataset, aug: Any, families: Sequence[str] = FAMILIES,
    device: torch.device | str = "cpu", batch_size: int = 256, num_workers: int = 0, seed: int = 0,
) -> dict[str, dict[str, FamilyInvariance]]:
    """``{encoder name: {family: FamilyInvariance}}``: :func:`invariance` of each encoder's backbone
    features (and expander embeddings) to each family.

    ``images`` yields ``(uint8 image, label)`` as the data sets of
    :func:`~vicreg_lightning.data.datasets.build_datasets` do. Each image gives the pair
    ``(x, T(x))`` = (:func:`single_family_view` with no family, with that family). Every encoder
    sees the same transformed images (the random draws are seeded by ``seed``), so encoders are
    compared on identical inputs. The modules are used in eval mode on ``device``."""
    device = torch.device(device)
    for backbone, expander in encoders.values():
        backbone.eval().to(device)
        if expander is not None:
            expander.eval().to(device)

    def encode_all(batch: Tensor, out: dict[str, dict[str, list[Tensor]]]) -> None:
        for name, (backbone, expander) in encoders.items():
            features, embeddings = encode(backbone, expander, batch)
            out[name].setdefault("features", []).append(features.cpu())
            if embeddings is not None:
                out[name].setdefault("embeddings", []).append(embeddings.cpu())

    # The reference view is deterministic: encoded once, it is the x of every family's pairs below.
    reference: dict[str, dict[str, list[Tensor]]] = {name: {} for name in encoders}
    for x, _ in make_loader(Transformed(images, single_family_view(aug, None)), batch_size, num_workers, seed=seed):
        encode_all(x.to(device, non_blocking=True), reference)
    results: dict[str, dict[str, FamilyInvariance]] = {name: {} for name in encoders}
    for family in families:
        transformed: dict[str, dict[str, list[Tensor]]] = {name: {} for name in encoders}
        changes = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the transforms' draws when the loader has no workers
            pairs = Transformed(images, _ReferenceAndFamily(aug, family))
            for (x, tx), _ in make_loader(pairs, batch_size, num_workers, seed=seed):
                changes.append((tx - x).abs().flatten(1).mean(dim=1))
                encode_all(tx.to(device, non_blocking=True), transformed)
        change = float(torch.cat(changes).mean())
        for name in encoders:
            scores = {space: invariance(torch.cat(reference[name][space]), torch.cat(values))
                      for space, values in transformed[name].items()}
            results[name][family] = FamilyInvariance(family, change, scores)
    return results


# ---------------------------------------------------------------------------------------------- groups


def _trace_sqrt_product(a: Tensor, b: Tensor) -> Tensor:
    """``Tr((S_a^½ S_b S_a^½)^½)`` for ``S_a = aᵀa``, ``S_b = bᵀb``, in the cheapest form.

    The eigenvalues of ``S_a S_b`` are the squared singular values of ``a bᵀ``, so the trace is the
    nuclear norm ``‖a bᵀ‖_*``: through an ``n×n`` eigen-problem when a set has fewer samples than
    dimensions (a class of a few dozen images in 2048-d), else through the ``D×D`` one."""
    n_small = min(a.shape[0], b.shape[0])
    if n_small <= a.shape[1]:
        small, large = (a, b) if a.shape[0] <= b.shape[0] else (b, a)
        cross = small @ large.T
        eigenvalues = torch.linalg.eigvalsh(cross @ cross.T)
    else:
        values, vectors = torch.linalg.eigh(a.T @ a)
        root = vectors @ torch.diag(values.clamp_min(0).sqrt()) @ vectors.T
        eigenvalues = torch.linalg.eigvalsh(root @ (b.T @ b) @ root)
    # Rounding leaves the zero eigenvalues of these PSD products slightly negative.
    return eigenvalues.clamp_min(0).sqrt().sum()


def frechet_distance(x: Tensor, y: Tensor) -> float:
    """Squared Fréchet (2-Wasserstein) distance between Gaussians fitted to two sets of vectors
    (Dowson and Landau, J. Multivariate Anal. 1982; as FID, Heusel et al., NeurIPS 2017)::

        d² = ‖μ_x − μ_y‖² + Tr(Σ_x) + Tr(Σ_y) − 2 Tr((Σ_x^½ Σ_y Σ_x^½)^½)

    with the unbiased sample covariances (``N − 1``), in float64. Exact for rank-deficient
    covariances (fewer samples than dimensions) without any ``D×D`` square root there
    (:func:`_trace_sqrt_product`). Both sets need at least 2 rows."""
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise ValueError(f"expected two (N >= 2, D) sets of the same width; got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    mean_x, mean_y = x.mean(dim=0), y.mean(dim=0)
    # Scaled so that Σ = aᵀa.
    a = (x - mean_x) / math.sqrt(len(x) - 1)
    b = (y - mean_y) / math.sqrt(len(y) - 1)
    distance = (mean_x - mean_y).square().sum() + a.square().sum() + b.square().sum() - 2 * _trace_sqrt_product(a, b)
    return float(distance.clamp_min(0))


def outlier_flags(values: Sequence[float], num_std: float = OUTLIER_NUM_STD) -> list[bool]:
    """Which values stand apart: ``v_g > mean + num_std · std`` of the *other* values (leave-one-out,
    so that an outlier does not raise its own bar; std with ``N − 1``). Needs at least 3 values (two
    others for a spread); fewer flag nothing."""
    array = np.asarray(values, dtype=np.float64)
    if len(array) < 3:
        return [False] * len(array)
    flags = []
    for g in range(len(array)):
        others = np.delete(array, g)
        flags.append(bool(array[g] > others.mean() + num_std * others.std(ddof=1)))
    return flags


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


# ---------------------------------------------------------------------------------------------- probe, map


def linear_probe(train_x: Tensor, train_y: Tensor, val_x: Tensor) -> np.ndarray:
    """Predictions of a logistic regression (scikit-learn, L2, C=1) fitted on standardised
    training features; unlabelled training samples are left out."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labelled = (train_y != UNLABELED).numpy()
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probe.fit(train_x.numpy()[labelled], train_y.numpy()[labelled])
    return probe.predict(val_x.numpy())


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


# ---------------------------------------------------------------------------------------------- figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def _plot_spectrum(spectra: dict[str, Tensor], dims: dict[str, int], ranks: dict[str, float], path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for space, values in spectra.items():
        ax.semilogy(np.arange(1, len(values) + 1), (values / values[0]).numpy(),
                    label=f"{space} ({dims[space]}-d, RankMe {ranks[space]:.1f})")
    ax.set(xlabel="index k", ylabel="σ_k / σ_1", title="Singular values on the validation set")
    ax.legend()
    _save(fig, path)


def _plot_std_hist(stds: dict[str, Tensor], path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(stds), figsize=(5 * len(stds), 3.5), squeeze=False)
    for ax, (space, std) in zip(axes[0], stds.items(), strict=True):
        ax.hist(std.numpy(), bins=50)
        ax.axvline(STD_THRESHOLD, color="red", linestyle="--", label=f"{STD_THRESHOLD:g}")
        if space == "embeddings":
            ax.axvline(1.0, color="green", linestyle=":", label="VICReg target 1")
        ax.set(xlabel="std over the validation set", ylabel="dimensions", title=f"Per-dimension std: {space}")
        ax.legend()
    _save(fig, path)


def _correlation_block(x: Tensor, size: int = CORRELATION_BLOCK) -> np.ndarray:
    block = x[:, :size].double()
    # NaN for constant dimensions (dead units have no correlation): shown blank.
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(block.T.numpy())


def _plot_correlation(corr: np.ndarray, space: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    image = ax.imshow(corr, cmap="RdBu_r", vmin=-1, vmax=1)
    fig.colorbar(image, ax=ax)
    ax.set(title=f"Correlation, first {len(corr)} dims of the {space}", xlabel="dim", ylabel="dim")
    _save(fig, path)


def _plot_per_class(names: Sequence[str], accuracy: np.ndarray, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(names)), 3.5))
    ax.bar(range(len(names)), accuracy)
    if len(names) <= 50:
        ax.set_xticks(range(len(names)), names, rotation=90 if len(names) > 12 else 0)
    ax.set(ylim=(0, 1), xlabel="class", ylabel="accuracy", title="Linear probe: per-class validation accuracy")
    _save(fig, path)


def _plot_confusion(matrix: np.ndarray, names: Sequence[str], path: Path) -> None:
    plt = _pyplot()
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
    _save(fig, path)


def _plot_map(coords: np.ndarray, labels: np.ndarray, names: Sequence[str], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 5))
    scatter = ax.scatter(coords[:, 0], coords[:, 1], c=labels, cmap="tab10" if len(names) <= 10 else "tab20", s=8)
    if len(names) <= 20:
        ax.legend(scatter.legend_elements()[0], [names[i] for i in np.unique(labels)], fontsize=7, markerscale=0.8,
                  loc="best")
    ax.set(title=title, xticks=[], yticks=[])
    _save(fig, path)


def _plot_invariance(
    recipe: list[RecipeEntry], measured: dict[str, FamilyInvariance], baseline: dict[str, FamilyInvariance] | None,
    path: Path,
) -> None:
    plt = _pyplot()
    series = [(f"{space}", measured, space) for space in SPACES if space in measured[FAMILIES[0]].scores]
    if baseline is not None:
        series.append(("features, untrained", baseline, "features"))
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / len(series)
    x = np.arange(len(recipe))
    for s, (label, results, space) in enumerate(series):
        ax.bar(x + (s - (len(series) - 1) / 2) * width, [results[e.family].scores[space].score for e in recipe],
               width, label=label)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [f"{e.family}\n(trained)" if e.trained else e.family for e in recipe])
    ax.set(ylabel="invariance (1 = invariant, 0 = unrelated)", title="Invariance per augmentation family")
    ax.legend()
    _save(fig, path)


def _plot_groups(rows: list[GroupStats], path: Path) -> None:
    plt = _pyplot()
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
    _save(fig, path)


# ---------------------------------------------------------------------------------------------- the document


@dataclass
class Document:
    """A report as blocks, rendered to Markdown and to self-contained HTML (images inlined)."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.blocks.append(("table", (list(header), [[str(c) for c in row] for row in rows])))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(("img", (name, caption)))

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for kind, content in self.blocks:
            if kind == "h2":
                lines += [f"## {content}", ""]
            elif kind == "p":
                lines += [content, ""]
            elif kind == "table":
                header, rows = content
                lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
            else:
                name, caption = content
                lines += [f"![{caption}]({name})", "", f"*{caption}*", ""]
        return "\n".join(lines)

    def html(self, folder: Path) -> str:
        def inline(text: str) -> str:
            escaped = html.escape(text)
            escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
            return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", escaped)

        parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>",
                 "<style>body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}"
                 "td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}</style></head><body>",
                 f"<h1>{html.escape(self.title)}</h1>"]
        for kind, content in self.blocks:
            if kind == "h2":
                parts.append(f"<h2>{inline(content)}</h2>")
            elif kind == "p":
                parts.append(f"<p>{inline(content)}</p>")
            elif kind == "table":
                header, rows = content
                parts.append("<table><tr>" + "".join(f"<th>{inline(h)}</th>" for h in header) + "</tr>")
                parts += ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in row) + "</tr>" for row in rows]
                parts.append("</table>")
            else:
                name, caption = content
                data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
                parts.append(f"<figure><img src='data:image/png;base64,{data}' alt='{html.escape(caption)}'>"
                             f"<figcaption>{inline(caption)}</figcaption></figure>")
        parts.append("</body></html>")
        return "\n".join(parts)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def _class_names(dataset: Dataset, num_classes: int) -> list[str]:
    # ImageFolder knows its folder names; a Subset wraps one; in-memory sets only have indices.
    classes = getattr(dataset, "classes", None) or getattr(getattr(dataset, "dataset", None), "classes", None)
    if classes and len(classes) == num_classes:
        return [str(c) for c in classes]
    return [str(i) for i in range(num_classes)]


# ---------------------------------------------------------------------------------------------- the report


@dataclass
class ReportOptions:
    """What :func:`write_report` evaluates on, and how much of it."""

    domain_name: str | None = None
    domain_root: str | None = None
    device: str = "auto"
    batch_size: int = 256
    num_workers: int | None = None
    max_samples: int = 10000
    invariance_samples: int = 512
    map_method: str = "auto"
    baseline: bool = True
    seed: int = 0


def _writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".report_write_test"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out {str(out)!r}: cannot write there ({e.strerror or e})") from None


def _architecture_known(info: dict[str, Any]) -> bool:
    return all(key in info for key in ("arch", "small_stem", "expander"))


def _health_section(doc: Document, spaces: dict[str, Tensor], device: torch.device, out: Path) -> dict[str, Any]:
    doc.heading("Spectrum, RankMe, std and correlation")
    spectra, ranks, stds, rows, numbers = {}, {}, {}, [], {}
    for space, x in spaces.items():
        # Not centred, as RankMe's own definition, so that the plot and the number agree.
        spectra[space] = torch.linalg.svdvals(x.to(device).double()).float().cpu()
        ranks[space] = float(rankme(x))
        stds[space] = x.double().std(dim=0).float()
        stats = {name: float(value) for name, value in std_stats(x, STD_THRESHOLD).items()}
        corr = float(mean_abs_offdiag_corr(x))
        rows.append([space, x.shape[1], _fmt(ranks[space], 1), _fmt(stats["min"]), _fmt(stats["mean"]),
                     _fmt(stats["frac_below"]), _fmt(corr)])
        numbers[space] = {"dim": x.shape[1], "rankme": ranks[space], **{f"std_{k}": v for k, v in stats.items()},
                          "mean_abs_corr": corr}
    _plot_spectrum(spectra, {space: x.shape[1] for space, x in spaces.items()}, ranks, out / "spectrum.png")
    _plot_std_hist(stds, out / "std_hist.png")
    corr_space = "embeddings" if "embeddings" in spaces else "features"
    _plot_correlation(_correlation_block(spaces[corr_space]), corr_space, out / "correlation.png")
    doc.table(["space", "dim", "RankMe", "std min", "std mean", f"frac std < {STD_THRESHOLD:g}", "mean abs corr"], rows)
    n = len(next(iter(spaces.values())))
    doc.text(f"RankMe is at most min(N, D), here N = {n} validation images: compare reports at equal N. "
             "Mean abs corr: mean absolute off-diagonal Pearson correlation of the dimensions.")
    doc.figure("spectrum.png", "Singular values (not centred, as RankMe), divided by the largest; log scale")
    doc.figure("std_hist.png", f"Per-dimension std over the validation set; red: {STD_THRESHOLD:g}")
    doc.figure("correlation.png", f"Pearson correlation of the first {CORRELATION_BLOCK} {corr_space} dimensions")
    return numbers


def _probe_section(doc: Document, train: Features, val: Features, spaces: dict[str, Tensor],
                   names: list[str], online: float | None, map_method: str, seed: int, out: Path) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix

    doc.heading("Linear probe and embedding map")
    labelled = (val.labels != UNLABELED).numpy()
    truth = val.labels.numpy()
    predictions = linear_probe(train.features, train.labels, val.features)
    matrix = confusion_matrix(truth[labelled], predictions[labelled], labels=list(range(len(names))))
    per_class = np.diag(matrix) / np.maximum(matrix.sum(axis=1), 1)
    accuracy = float((predictions[labelled] == truth[labelled]).mean())
    online_text = f"; the run's online probe (val/probe_acc1): {online:.3f}" if online is not None else ""
    doc.text("A logistic regression (scikit-learn, standardised features) fitted on the frozen backbone features "
             f"of the training images, evaluated on the validation images: **accuracy {accuracy:.3f}**{online_text}.")
    order = np.argsort(per_class, kind="stable")
    shown = order if len(names) <= 30 else order[:15]
    doc.table(["class", "validation images", "accuracy"],
              [[names[c], int(matrix[c].sum()), _fmt(float(per_class[c]))] for c in shown])
    if len(names) > 30:
        doc.text("The 15 classes with the lowest accuracy; every class is in report.json.")
    _plot_per_class(names, per_class, out / "probe_per_class.png")
    _plot_confusion(matrix, names, out / "confusion.png")
    map_space = "embeddings" if "embeddings" in spaces else "features"
    coords, rows, method = two_d_map(spaces[map_space], map_method, seed)
    _plot_map(coords, truth[rows.numpy()], names, f"{method} of the validation {map_space}", out / "embedding_map.png")
    doc.figure("probe_per_class.png", "Per-class accuracy of the linear probe")
    doc.figure("confusion.png", "Confusion matrix of the linear probe (rows: true class; colour: row fraction)")
    doc.figure("embedding_map.png", f"{method} of {len(rows)} validation {map_space}, coloured by class")
    return {"accuracy": accuracy, "per_class": dict(zip(names, per_class.tolist(), strict=True)),
            "online_probe_val_acc1": online, "map": method}


def _invariance_section(doc: Document, encoder: LoadedEncoder, images: Dataset, spaces: Sequence[str],
                        options: ReportOptions, device: torch.device, workers: int, out: Path) -> dict[str, Any]:
    doc.heading('What counts as "same": augmentation recipe and measured invariance')
    recipe = training_recipe(encoder.augment)
    encoders: dict[str, Encoder] = {"trained": (encoder.backbone, encoder.expander)}
    if options.baseline and _architecture_known(encoder.info):
        encoders["untrained"] = untrained_twin(encoder.info, options.seed)
    results = measure_invariance(encoders, images, encoder.augment, device=device, batch_size=options.batch_size,
                                 num_workers=workers, seed=options.seed)
    measured, baseline = results["trained"], results.get("untrained")
    _plot_invariance(recipe, measured, baseline, out / "invariance.png")
    rows = []
    for entry in recipe:
        family = measured[entry.family]
        rows.append([entry.family, "yes" if entry.trained else "no", entry.probability, entry.parameters or "–",
                     _fmt(family.input_change), *[_fmt(family.scores[s].score) for s in spaces],
                     *([_fmt(baseline[entry.family].scores["features"].score)] if baseline else [])])
    doc.table(["family", "in training recipe", "probability", "parameters", "input change",
               *[f"invariance ({space})" for space in spaces], *(["untrained (features)"] if baseline else [])], rows)
    count = len(images)  # type: ignore[arg-type]
    doc.text(f"On {count} validation images x: invariance = (sim_same − sim_unrelated) / "
             "(1 − sim_unrelated), sim_same the mean cosine between f(x) and f(T(x)), sim_unrelated the mean "
             "cosine between f(x) and f(y) over all pairs of different images, every vector centred on the mean "
             "f(x) of the images (the part all images share says nothing about which image it is). "
             "1: invariant; 0: T(x) is no closer "
             "to x than another image is. T applies one family with probability 1 and the recipe's parameters; x "
             "is the whole image at the training size. Input change: mean |T(x) − x| of the normalised pixels (0: "
             "the family does nothing to these images). Untrained: an encoder of the same architecture at its "
             "random initialisation.")
    doc.figure("invariance.png", "Invariance per augmentation family ('trained': in the training recipe)")
    return {"recipe": [asdict(e) for e in recipe], "invariance": {f: asdict(v) for f, v in measured.items()},
            "invariance_untrained": {f: asdict(v) for f, v in baseline.items()} if baseline else None}


def _knn_correct(bank: Features, queries: Features, num_classes: int) -> Tensor:
    # vicreg_lightning.knn imports Lightning (seconds): only when the report gets this far.
    from vicreg_lightning.knn import knn_class_scores

    labelled = bank.labels != UNLABELED
    scores = knn_class_scores(queries.features, bank.features[labelled], bank.labels[labelled], num_classes,
                              KNN_K, KNN_TEMPERATURE)
    return scores.argmax(dim=1) == queries.labels


def _groups_section(doc: Document, encoder: LoadedEncoder, train: Features, val: Features,
                    names: list[str], num_classes: int, options: ReportOptions, device: torch.device,
                    represent: Callable[[Dataset], Features], out: Path) -> list[dict[str, Any]]:
    doc.heading("Stability across groups and domains")
    features, embeddings, group_index = val.features, val.embeddings, val.labels
    knn_correct = _knn_correct(train, val, num_classes)
    group_names = [f"class {n}" for n in names]
    if options.domain_name is not None:
        domain_data = OmegaConf.merge(encoder.data, {"name": options.domain_name,
                                                     **({"root": options.domain_root} if options.domain_root else {})})
        domain_train, domain_val, domain_classes = build_datasets(domain_data)
        domain, domain_bank = represent(domain_val), represent(domain_train)
        features = torch.cat([features, domain.features])
        embeddings = torch.cat([embeddings, domain.embeddings]) if embeddings is not None else None
        group_index = torch.cat([group_index, torch.full_like(domain.labels, len(group_names))])
        knn_correct = torch.cat([knn_correct, _knn_correct(domain_bank, domain, domain_classes)])
        group_names.append(f"domain {options.domain_name}")
    keep = group_index != UNLABELED
    groups = group_stability(features[keep], embeddings[keep] if embeddings is not None else None,
                             group_index[keep], group_names, knn_correct[keep], options.seed, device=device)
    _plot_groups(groups, out / "groups.png")
    doc.table(["group", "images", "RankMe (features)", "RankMe (embeddings)", "kNN accuracy",
               "Fréchet distance to the rest", "flagged"],
              [[g.name, g.size, _fmt(g.rankme_features, 1), _fmt(g.rankme_embeddings, 1), _fmt(g.knn_accuracy),
                _fmt(g.distance, 2), "**yes**" if g.flagged else ""] for g in groups])
    domain_text = f" and the data set {options.domain_name} as one group" if options.domain_name else ""
    doc.text(f"Groups: the validation classes{domain_text}. RankMe on {min(g.size for g in groups)} images of "
             f"each group (the smallest group's size: RankMe grows with N). kNN: weighted cosine kNN (k={KNN_K}, "
             f"T={KNN_TEMPERATURE}) of the backbone features among the training features of the same data set. "
             "Distance: squared Fréchet distance between Gaussians fitted to the group's backbone features and to "
             f"all the others'. Flagged: a distance above the mean + {OUTLIER_NUM_STD:g} std of the other groups' "
             "distances (needs at least 3 groups). Between classes a large distance is what a discriminative "
             "representation gives: the flag says which group to look at (a domain shift, a class the encoder "
             "maps apart), not that it is wrong.")
    doc.figure("groups.png", "Per group: Fréchet distance to the rest (red: flagged), kNN accuracy and RankMe")
    return [asdict(g) for g in groups]


def write_report(encoder: LoadedEncoder, out: Path, options: ReportOptions) -> dict[str, Any]:
    """Evaluate ``encoder`` on its ``data`` and write the figures (:data:`FIGURES`), ``report.md``,
    ``report.html`` and ``report.json`` into ``out``. Returns the numbers of ``report.json``."""
    started = time.monotonic()
    _writable(out)
    device = pick_device(options.device, key="--device")
    # The float64 statistics (spectra, Fréchet distances) run on CUDA when there is one; MPS has no float64.
    stats_device = device if device.type == "cuda" else torch.device("cpu")
    data, aug, seed = encoder.data, encoder.augment, options.seed
    if options.num_workers is not None:
        workers = options.num_workers
    elif data.num_workers >= 0:
        workers = data.num_workers
    else:
        from vicreg_lightning.data.datamodule import default_num_workers  # imports Lightning: only when needed

        workers = default_num_workers()
    train_set, val_set, num_classes = build_datasets(data)
    if len(val_set) < 2 or len(train_set) < 2:  # type: ignore[arg-type]
        raise UserError(f"data={data.name}: the train and validation splits need at least 2 images each")
    names = _class_names(val_set, num_classes)

    def represent(dataset: Dataset) -> Features:
        transformed = Transformed(capped(dataset, options.max_samples, seed), eval_transform(aug))
        return extract(encoder.backbone, encoder.expander, transformed, device, options.batch_size, workers)

    val, train = represent(val_set), represent(train_set)
    spaces = {space: x for space in SPACES if (x := val.space(space)) is not None}
    architecture = ", ".join(f"{k}={encoder.info[k]}" for k in ("arch", "small_stem", "expander") if k in encoder.info)
    doc = Document(f"Representation report: {encoder.source}")
    doc.text(f"Weights: `{encoder.source}`, loaded with {encoder.loaded_with} "
             f"({architecture or 'architecture unknown'}). Data: `{data.name}`, {len(val.labels)} validation and "
             f"{len(train.labels)} training images (at most "
             f"{options.max_samples} each), through the run's eval transform ({aug.size} px). Device: {device}.")
    metrics = encoder.info.get("metrics") or {}
    numbers: dict[str, Any] = {
        "source": str(encoder.source), "loaded_with": encoder.loaded_with, "data": data.name,
        "architecture": {k: encoder.info.get(k) for k in ("arch", "small_stem", "zero_init_residual", "expander")},
        "val_samples": len(val.labels), "train_samples": len(train.labels), "device": str(device),
        "health": _health_section(doc, spaces, stats_device, out),
        "linear_probe": _probe_section(doc, train, val, spaces, names, metrics.get("val/probe_acc1"),
                                       options.map_method, seed, out),
    }
    numbers.update(_invariance_section(doc, encoder, capped(val_set, options.invariance_samples, seed), list(spaces),
                                       options, device, workers, out))
    numbers["groups"] = _groups_section(doc, encoder, train, val, names, num_classes, options, stats_device, represent,
                                        out)
    numbers["seconds"] = time.monotonic() - started
    doc.text(f"Written in {numbers['seconds']:.0f} s.")
    (out / "report.md").write_text(doc.markdown() + "\n")
    (out / "report.html").write_text(doc.html(out) + "\n")
    (out / "report.json").write_text(json.dumps(numbers, indent=2, default=str) + "\n")
    return numbers


def default_out(encoder: LoadedEncoder) -> Path:
    """``<run dir>/report``; else ``report`` inside an export folder, or next to a checkpoint."""
    if encoder.run_dir is not None:
        return encoder.run_dir / "report"
    return encoder.source / "report" if encoder.source.is_dir() else encoder.source.parent / "report"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a checkpoint (<run dir>/checkpoints/*.ckpt), a run directory, "
                        "or an export folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <run dir>/report)")
    parser.add_argument("--data", default=None, help="evaluate on this data set (data.name; default: the run's)")
    parser.add_argument("--data-root", default=None, help="its data.root (default: the run's)")
    parser.add_argument("--domain", default=None, help="a second data set, one more group in the stability section")
    parser.add_argument("--domain-root", default=None, help="its data.root (default: that of --data)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=None, help="loader workers (default: the run's)")
    parser.add_argument("--max-samples", type=int, default=10000, help="images per split, at most (seeded draw)")
    parser.add_argument("--invariance-samples", type=int, default=512, help="validation images for invariance")
    parser.add_argument("--map", dest="map_method", choices=("auto", "tsne", "pca"), default="auto")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the untrained encoder's invariance")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_samples", "invariance_samples"):
        if getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2")
    options = ReportOptions(
        domain_name=args.domain, domain_root=args.domain_root,
        device=args.device, batch_size=args.batch_size, num_workers=args.num_workers, max_samples=args.max_samples,
        invariance_samples=args.invariance_samples, map_method=args.map_method, baseline=args.baseline,
        seed=args.seed,
    )
    with user_errors_exit():  # bad input: one line on stderr, exit code 2
        encoder = load_for_report(args.source, args.data, args.data_root)
        out = args.out or default_out(encoder)
        numbers = write_report(encoder, out, options)
    print(f"wrote {out / 'report.md'}, report.html, report.json and {len(FIGURES)} figures "
          f"({numbers['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
