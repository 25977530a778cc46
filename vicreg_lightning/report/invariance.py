"""What counts as "same": the augmentation families of a training recipe, views that apply one
family at a time, and the invariance metric that measures, per family, how close an encoder keeps
an image and its transformed view (:func:`invariance`, :func:`measure_invariance`)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

import torch
from omegaconf import OmegaConf
from torch import Tensor, nn
from torch.utils.data import Dataset

from vicreg_lightning.data.augment import view_transform
from vicreg_lightning.data.datasets import Transformed
from vicreg_lightning.features import encode, make_loader
from vicreg_lightning.metrics.invariance import InvarianceScore, invariance
from vicreg_lightning.report.config import ReportOptions
from vicreg_lightning.report.document import Document, fmt
from vicreg_lightning.report.plotting import pyplot, save_figure
from vicreg_lightning.report.source import SPACES, LoadedEncoder, architecture_known, untrained_twin

FIGURES: tuple[str, ...] = ("invariance.png",)

# The augmentation families of the recipe (vicreg_lightning.data.augment.view_transform), in its order.
FAMILIES: tuple[str, ...] = ("crop", "flip", "jitter", "grayscale", "blur", "solarize")


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


def invariance_section(doc: Document, encoder: LoadedEncoder, images: Dataset, spaces: Sequence[str],
                       options: ReportOptions, device: torch.device, workers: int, out: Path) -> dict[str, Any]:
    """The training recipe and the measured invariance to each augmentation family, beside an untrained
    twin's: the table, ``invariance.png`` and the ``recipe``, ``invariance`` and ``invariance_untrained`` keys."""
    doc.heading('What counts as "same": augmentation recipe and measured invariance')
    recipe = training_recipe(encoder.augment)
    encoders: dict[str, Encoder] = {"trained": (encoder.backbone, encoder.expander)}
    if options.baseline and architecture_known(encoder.info):
        encoders["untrained"] = untrained_twin(encoder.info, options.seed)
    results = measure_invariance(encoders, images, encoder.augment, device=device, batch_size=options.batch_size,
                                 num_workers=workers, seed=options.seed)
    measured, baseline = results["trained"], results.get("untrained")
    plot_invariance(recipe, measured, baseline, out / "invariance.png")
    rows = []
    for entry in recipe:
        family = measured[entry.family]
        rows.append([entry.family, "yes" if entry.trained else "no", entry.probability, entry.parameters or "–",
                     fmt(family.input_change), *[fmt(family.scores[s].score) for s in spaces],
                     *([fmt(baseline[entry.family].scores["features"].score)] if baseline else [])])
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


def plot_invariance(
    recipe: list[RecipeEntry], measured: dict[str, FamilyInvariance], baseline: dict[str, FamilyInvariance] | None,
    path: Path,
) -> None:
    plt = pyplot()
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
    save_figure(fig, path)
