"""What the encoder throws away: for each nuisance attribute a recipe touches (brightness,
contrast, saturation, hue, blur, flip, the crop's scale and position), controlled variants of
validation images with known attribute values, and how well a cross-validated linear read-out
recovers that value from a representation — R² of ridge regression for a continuous value,
accuracy of logistic regression for a discrete one — next to the same read-out of the class.

Each score becomes a *decodability* in [0, 1] (R² clipped at 0; accuracy rescaled so that chance is
0 and perfect is 1) and a label by fixed rules: *kept* at :data:`KEPT_MIN` or more, *discarded*
below :data:`DISCARDED_BELOW`, *reduced* between. Raw pixels and the untrained twin, read out the
same way, say how much of an attribute was there to keep.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import Dataset

from vicreg_lightning.data.augment import eval_resize
from vicreg_lightning.data.catalog import UNLABELED
from vicreg_lightning.features import encode
from vicreg_lightning.report.config import ReportOptions
from vicreg_lightning.report.document import Document, fmt
from vicreg_lightning.report.invariance import Encoder, training_recipe
from vicreg_lightning.report.source import LoadedEncoder, architecture_known, untrained_twin

KEPT_MIN = 0.5
DISCARDED_BELOW = 0.1
FOLDS = 5

Representation = Callable[[Tensor], Tensor]  # float images in [0, 1], (N, 3, H, W) -> (N, D)


@dataclass(frozen=True)
class Attribute:
    """A nuisance attribute: the augmentation family that varies it in training, its values
    (``low``-``high`` for a continuous one, ``{0, 1}`` for a discrete one) and how a variant with a
    given value is made from a reference image."""

    name: str
    family: str
    discrete: bool
    low: float
    high: float
    apply: Callable[[Tensor, float], Tensor]  # (3, H, W) in [0, 1], value -> (3, H, W)


def _grey(image: Tensor) -> Tensor:
    return TF.rgb_to_grayscale(image, num_output_channels=3)


def _crop(image: Tensor, scale: float, position: float) -> Tensor:
    """A square crop of ``scale`` of the image's area, from the left edge (``position`` 0) to the
    right (1), vertically centred, resized back to the image's size."""
    height, width = image.shape[-2:]
    side = max(1, round(min(height, width) * scale ** 0.5))
    left, top = round((width - side) * position), (height - side) // 2
    return TF.resized_crop(image, top, left, side, side, [height, width], antialias=True)


ATTRIBUTES: dict[str, Attribute] = {a.name: a for a in (
    Attribute("brightness", "jitter", False, 0.6, 1.4, lambda x, v: (x * v).clamp(0, 1)),
    Attribute("contrast", "jitter", False, 0.6, 1.4,
              lambda x, v: ((x - _grey(x).mean()) * v + _grey(x).mean()).clamp(0, 1)),
    Attribute("saturation", "jitter", False, 0.0, 2.0, lambda x, v: ((x - _grey(x)) * v + _grey(x)).clamp(0, 1)),
    Attribute("hue", "jitter", False, -0.2, 0.2, lambda x, v: TF.adjust_hue(x, v)),
    Attribute("blur", "blur", False, 0.1, 2.0,
              lambda x, v: TF.gaussian_blur(x, [2 * int(np.ceil(3 * v)) + 1] * 2, [v, v])),
    Attribute("flip", "flip", True, 0, 1, lambda x, v: TF.horizontal_flip(x) if v else x),
    Attribute("crop scale", "crop", False, 0.3, 1.0, lambda x, v: _crop(x, v, 0.5)),
    Attribute("crop position", "crop", False, 0.0, 1.0, lambda x, v: _crop(x, 0.5, v)),
)}


def attributes_of_recipe(trained_families: Sequence[str], greyscale: bool) -> list[str]:
    """The attributes a recipe varies (its families with probability > 0); saturation and hue
    mean nothing on grey images."""
    names = [a.name for a in ATTRIBUTES.values() if a.family in trained_families]
    return [n for n in names if not (greyscale and n in ("saturation", "hue"))]


def variants(images: Tensor, attribute: Attribute, seed: int) -> tuple[Tensor, Tensor]:
    """Each image once, with a value of ``attribute`` drawn for it (seeded): the variants and the values."""
    g = torch.Generator().manual_seed(seed)
    if attribute.discrete:
        values = torch.randint(0, 2, (len(images),), generator=g).double()
    else:
        values = attribute.low + (attribute.high - attribute.low) * torch.rand(len(images), generator=g, dtype=torch.float64)
    return torch.stack([attribute.apply(x, float(v)) for x, v in zip(images, values)]), values


def decodability(x: Tensor, y: Tensor, discrete: bool, seed: int) -> tuple[float, float]:
    """``(score, decodability)`` of a linear read-out of ``y`` from ``x``, cross-validated over
    :data:`FOLDS` seeded folds: ridge regression's R² on centred inputs (its penalty chosen inside
    each training fold; standardising would blow up pixels that barely vary, and the fit with them)
    or logistic regression's accuracy on standardised inputs."""
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    features, target = x.double().numpy(), y.numpy()
    if discrete:
        folds = StratifiedKFold(FOLDS, shuffle=True, random_state=seed)
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        accuracy = float(np.mean(cross_val_score(model, features, target, cv=folds, scoring="accuracy")))
        chance = float(np.max(np.bincount(target.astype(int))) / len(target))
        return accuracy, max(0.0, (accuracy - chance) / (1 - chance))
    folds = KFold(FOLDS, shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(with_std=False), RidgeCV(alphas=np.logspace(-3, 7, 21)))
    r2 = float(np.mean(cross_val_score(model, features, target, cv=folds, scoring="r2")))
    return r2, max(0.0, r2)


def label(decodable: float) -> str:
    if decodable >= KEPT_MIN:
        return "kept"
    return "discarded" if decodable < DISCARDED_BELOW else "reduced"


def discarded_information(
    representations: Mapping[str, Representation], images: Tensor, labels: Tensor | None,
    attributes: Sequence[str], seed: int = 0,
) -> dict[str, dict[str, dict[str, float | str]]]:
    """``{attribute: {representation: {"metric", "score", "decodability", "label"}}}`` for each
    attribute (variants of ``images``, float in [0, 1]) and, when ``labels`` are given, for
    ``"class"`` (the clean images' class, read out the same way with logistic regression)."""
    table: dict[str, dict[str, dict[str, float | str]]] = {}
    targets = [(name, ATTRIBUTES[name]) for name in attributes]
    for index, (name, attribute) in enumerate(targets):
        changed, values = variants(images, attribute, seed + index)
        table[name] = _read_out(representations, changed, values, attribute.discrete, seed)
    if labels is not None:
        table["class"] = _read_out(representations, images, labels.double(), True, seed)
    return table


def _read_out(representations: Mapping[str, Representation], images: Tensor, values: Tensor, discrete: bool,
              seed: int) -> dict[str, dict[str, float | str]]:
    row = {}
    for name, represent in representations.items():
        with torch.no_grad():
            x = represent(images).flatten(1).cpu()
        score, decodable = decodability(x, values, discrete, seed)
        row[name] = {"metric": "accuracy" if discrete else "r2", "score": score, "decodability": decodable,
                     "label": label(decodable)}
    return row


# Raw pixels are read out at this size at most (average-pooled): ridge regression on 224-px images
# would fit 150,528 inputs per sample.
PIXELS_MAX_SIZE = 32


def reference_images(dataset, aug, count: int) -> tuple[Tensor, Tensor]:
    """``count`` images of ``dataset`` as the eval transform sees them before normalising (resized,
    centre-cropped to ``aug.size``; float in [0, 1]) and their labels."""
    resize = eval_resize(aug)
    pairs = [dataset[i] for i in range(min(count, len(dataset)))]
    images = torch.stack([resize(torch.as_tensor(image)).float() / 255 for image, _ in pairs])
    return images, torch.tensor([int(label) for _, label in pairs])


def representations(encoders: Mapping[str, tuple[torch.nn.Module, torch.nn.Module | None]], aug,
                    device: torch.device, batch_size: int = 256) -> dict[str, Representation]:
    """Raw pixels, and the features and embeddings of each ``(backbone, expander)`` on the
    normalised images (``aug.mean``/``aug.std``), named ``pixels``, ``<encoder> features``, ..."""
    mean = torch.tensor(list(aug.mean)).view(1, 3, 1, 1)
    std = torch.tensor(list(aug.std)).view(1, 3, 1, 1)

    def pixels(images: Tensor) -> Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(images, min(PIXELS_MAX_SIZE, images.shape[-1]))

    def spaces(backbone: torch.nn.Module, expander: torch.nn.Module | None) -> Callable[[Tensor, int], Tensor]:
        # Features and embeddings of the same images come from one backbone pass: the last images
        # encoded are kept until the next ones come.
        last: dict[str, Any] = {"images": None}

        def represent(images: Tensor, space: int) -> Tensor:
            if last["images"] is not images:
                backbone.to(device)
                if expander is not None:
                    expander.to(device)
                parts = [encode(backbone, expander, ((batch - mean) / std).to(device)) for batch in images.split(batch_size)]
                last.update(images=images, out=[torch.cat([p[i].cpu() for p in parts]) if parts[0][i] is not None
                                                else None for i in (0, 1)])
            return last["out"][space]
        return represent

    found: dict[str, Representation] = {"pixels": pixels}
    for name, (backbone, expander) in encoders.items():
        represent = spaces(backbone, expander)
        found[f"{name} features"] = partial(represent, space=0)
        if expander is not None:
            found[f"{name} embeddings"] = partial(represent, space=1)
    return found


def discarded_section(doc: Document, encoder: LoadedEncoder, images: Dataset, options: ReportOptions,
                      device: torch.device) -> dict[str, Any]:
    """Linear read-outs of each nuisance attribute the recipe varies, from pixels, features, embeddings
    and the untrained twin: the table and the ``discarded`` key."""
    doc.heading("What is discarded: linear read-outs of each nuisance attribute")
    aug = encoder.augment
    reference, labels = reference_images(images, aug, options.invariance_samples)
    greyscale = bool((reference[:, :1] == reference[:, 1:]).all())  # saturation and hue mean nothing then
    attributes = attributes_of_recipe([entry.family for entry in training_recipe(aug) if entry.trained], greyscale)
    encoders: dict[str, Encoder] = {"trained": (encoder.backbone, encoder.expander)}
    if options.baseline and architecture_known(encoder.info):
        backbone, _ = untrained_twin(encoder.info, options.seed)
        encoders["untrained"] = (backbone, None)
    spaces = representations(encoders, aug, device, options.batch_size)
    labelled = labels != UNLABELED
    table = discarded_information(spaces, reference, labels if bool(labelled.all()) else None, attributes,
                                  options.seed)
    rows = [[attribute, row["pixels"]["metric"],
             *[f"{fmt(cell['score'])} ({cell['label']})" for cell in row.values()]] for attribute, row in table.items()]
    doc.table(["attribute", "read-out", *spaces], rows)
    doc.text(f"On {len(reference)} validation images, each made into one variant with a random value of the "
             "attribute (brightness, contrast, saturation: factors; hue: shift; blur: Gaussian sigma in px; flip: "
             "yes/no; crop scale: area kept; crop position: left to right), for the attributes the training recipe "
             "varies. Read-out: ridge regression (R², continuous values; centred inputs) or logistic regression "
             "(accuracy: flip, class; standardised inputs), 5-fold cross-validated. Decodability: R² clipped at 0, or accuracy "
             f"rescaled so that chance is 0; kept ≥ {KEPT_MIN}, discarded < {DISCARDED_BELOW}, reduced between. "
             "Pixels: the images average-pooled to at most 32 px. Untrained: the same architecture at random "
             "initialisation.")
    return {"discarded": {"attributes": attributes, "read_outs": table, "kept_min": KEPT_MIN,
                          "discarded_below": DISCARDED_BELOW}}
