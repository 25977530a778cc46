"""The report itself: its sections (spectrum and health, linear probe and map, augmentation recipe
and invariance, what is discarded, stability across groups; the threshold rules are
:mod:`vicreg_lightning.report.thresholds`) and :func:`write_report`, which evaluates an encoder and writes the figures,
``report.md``, ``report.html`` and ``report.json``."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from torch import Tensor
from torch.utils.data import Dataset

from vicreg_lightning.data.augment import eval_transform
from vicreg_lightning.report.config import ReportOptions
from vicreg_lightning.data.catalog import UNLABELED
from vicreg_lightning.data.datasets import Transformed, build_datasets
from vicreg_lightning.errors import UserError
from vicreg_lightning.evaluate import pick_device
from vicreg_lightning.features import Features
from vicreg_lightning.metrics.health import mean_abs_offdiag_corr, rankme, std_stats
from vicreg_lightning.report.document import Document, _fmt
from vicreg_lightning.report.figures import (
    CORRELATION_BLOCK,
    STD_THRESHOLD,
    _correlation_block,
    _plot_confusion,
    _plot_correlation,
    _plot_groups,
    _plot_invariance,
    _plot_map,
    _plot_per_class,
    _plot_spectrum,
    _plot_std_hist,
)
from vicreg_lightning.metrics.groups import OUTLIER_NUM_STD, group_index as index_groups
from vicreg_lightning.report.discarded import (
    DISCARDED_BELOW,
    KEPT_MIN,
    attributes_of_recipe,
    discarded_information,
    reference_images,
    representations,
)
from vicreg_lightning.report.groups import group_stability
from vicreg_lightning.report.metadata import metadata_groups
from vicreg_lightning.report.invariance import Encoder, measure_invariance, training_recipe
from vicreg_lightning.report.probes import KNN_K, KNN_TEMPERATURE, _knn_correct, linear_probe, two_d_map
from vicreg_lightning.report.source import SPACES, LoadedEncoder, capped, extract, untrained_twin
from vicreg_lightning.report.thresholds import thresholds_section

FIGURES: tuple[str, ...] = (
    "spectrum.png", "std_hist.png", "correlation.png", "probe_per_class.png", "confusion.png",
    "embedding_map.png", "invariance.png", "groups.png", "thresholds.png",
)


def _class_names(dataset: Dataset, num_classes: int) -> list[str]:
    # ImageFolder knows its folder names; a Subset wraps one; in-memory sets only have indices.
    classes = getattr(dataset, "classes", None) or getattr(getattr(dataset, "dataset", None), "classes", None)
    if classes and len(classes) == num_classes:
        return [str(c) for c in classes]
    return [str(i) for i in range(num_classes)]


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


def _probe_section(doc: Document, probabilities: np.ndarray, val: Features, spaces: dict[str, Tensor],
                   names: list[str], online: float | None, map_method: str, seed: int, out: Path) -> dict[str, Any]:
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


def _discarded_section(doc: Document, encoder: LoadedEncoder, images: Dataset, options: ReportOptions,
                       device: torch.device) -> dict[str, Any]:
    doc.heading("What is discarded: linear read-outs of each nuisance attribute")
    aug = encoder.augment
    reference, labels = reference_images(images, aug, options.invariance_samples)
    greyscale = bool((reference[:, :1] == reference[:, 1:]).all())  # saturation and hue mean nothing then
    attributes = attributes_of_recipe([entry.family for entry in training_recipe(aug) if entry.trained], greyscale)
    encoders: dict[str, Encoder] = {"trained": (encoder.backbone, encoder.expander)}
    if options.baseline and _architecture_known(encoder.info):
        backbone, _ = untrained_twin(encoder.info, options.seed)
        encoders["untrained"] = (backbone, None)
    spaces = representations(encoders, aug, device, options.batch_size)
    labelled = labels != UNLABELED
    table = discarded_information(spaces, reference, labels if bool(labelled.all()) else None, attributes,
                                  options.seed)
    rows = [[attribute, row["pixels"]["metric"],
             *[f"{_fmt(cell['score'])} ({cell['label']})" for cell in row.values()]] for attribute, row in table.items()]
    doc.table(["attribute", "read-out", *spaces], rows)
    doc.text(f"On {len(reference)} validation images, each made into one variant with a random value of the "
             "attribute (brightness, contrast, saturation: factors; hue: shift; blur: Gaussian sigma in px; flip: "
             "yes/no; crop scale: area kept; crop position: left to right), for the attributes the training recipe "
             "varies. Read-out: ridge regression (R², continuous values; centred inputs) or logistic regression "
             "(accuracy: flip, class; standardised inputs), 5-fold cross-validated. Decodability: R² clipped at 0, or accuracy "
             f"rescaled so that chance is 0; kept ≥ {KEPT_MIN}, discarded < {DISCARDED_BELOW}, reduced between. "
             "Pixels: the images average-pooled to at most 32 px. Untrained: the same architecture at random "
             "initialisation.")
    return {"attributes": attributes, "read_outs": table, "kept_min": KEPT_MIN, "discarded_below": DISCARDED_BELOW}


def _groups_section(doc: Document, encoder: LoadedEncoder, train: Features, val: Features, names: list[str],
                    metadata: list[str] | None, num_classes: int, options: ReportOptions, device: torch.device,
                    represent: Callable[[Dataset], Features], out: Path) -> list[dict[str, Any]]:
    doc.heading("Stability across groups and domains")
    features, embeddings, group_index, labels = val.features, val.embeddings, val.labels, val.labels
    knn_correct = _knn_correct(train, val, num_classes)
    group_names = [f"class {n}" for n in names]
    if metadata is not None:
        group_names, group_index = index_groups(metadata)
    if options.domain_name is not None:
        domain_data = OmegaConf.merge(encoder.data, {"name": options.domain_name,
                                                     **({"root": options.domain_root} if options.domain_root else {})})
        domain_train, domain_val, domain_classes = build_datasets(domain_data)
        domain, domain_bank = represent(domain_val), represent(domain_train)
        features = torch.cat([features, domain.features])
        embeddings = torch.cat([embeddings, domain.embeddings]) if embeddings is not None else None
        group_index = torch.cat([group_index, torch.full_like(domain.labels, len(group_names))])
        labels = torch.cat([labels, domain.labels])
        knn_correct = torch.cat([knn_correct, _knn_correct(domain_bank, domain, domain_classes)])
        group_names.append(f"domain {options.domain_name}")
    keep = labels != UNLABELED  # kNN accuracy needs a label
    groups = group_stability(features[keep], embeddings[keep] if embeddings is not None else None,
                             group_index[keep], group_names, knn_correct[keep], options.seed, device=device)
    _plot_groups(groups, out / "groups.png")
    doc.table(["group", "images", "RankMe (features)", "RankMe (embeddings)", "kNN accuracy",
               "Fréchet distance to the rest", "flagged"],
              [[g.name, g.size, _fmt(g.rankme_features, 1), _fmt(g.rankme_embeddings, 1), _fmt(g.knn_accuracy),
                _fmt(g.distance, 2), "**yes**" if g.flagged else ""] for g in groups])
    domain_text = f" and the data set {options.domain_name} as one group" if options.domain_name else ""
    source = f"the groups of {options.groups_csv}" if metadata is not None else "the validation classes"
    doc.text(f"Groups: {source}{domain_text}. RankMe on {min(g.size for g in groups)} images of "
             f"each group (the smallest group's size: RankMe grows with N). kNN: weighted cosine kNN (k={KNN_K}, "
             f"T={KNN_TEMPERATURE}) of the backbone features among the training features of the same data set. "
             "Distance: squared Fréchet distance between Gaussians fitted to the group's backbone features and to "
             f"all the others'. Flagged: a distance above the mean + {OUTLIER_NUM_STD:g} std of the other groups' "
             "distances (needs at least 3 groups). "
             + ("Between classes a large distance is what a discriminative representation gives: the flag says "
                "which group to look at (a domain shift, a class the encoder maps apart), not that it is wrong."
                if metadata is None else "Metadata groups with the same mix of classes should lie close together: a "
                "flagged group is one the encoder maps apart (a site, device or population shift to look at)."))
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
    # The groups of --groups-csv, one per row of val (checked before anything slow); None: the classes.
    groups = metadata_groups(options.groups_csv, capped(val_set, options.max_samples, seed), val_set, train_set,
                             data.root) if options.groups_csv else None

    def represent(dataset: Dataset) -> Features:
        transformed = Transformed(capped(dataset, options.max_samples, seed), eval_transform(aug))
        return extract(encoder.backbone, encoder.expander, transformed, device, options.batch_size, workers)

    val, train = represent(val_set), represent(train_set)
    probabilities = linear_probe(train.features, train.labels, val.features, num_classes)
    spaces = {space: x for space in SPACES if (x := val.space(space)) is not None}
    architecture = ", ".join(f"{k}={encoder.info[k]}" for k in ("arch", "backbone_kwargs", "pool", "small_stem", "expander")
                             if encoder.info.get(k) not in (None, {}))
    doc = Document(f"Representation report: {encoder.source}")
    doc.text(f"Weights: `{encoder.source}`, loaded with {encoder.loaded_with} "
             f"({architecture or 'architecture unknown'}). Data: `{data.name}`, {len(val.labels)} validation and "
             f"{len(train.labels)} training images (at most "
             f"{options.max_samples} each), through the run's eval transform ({aug.size} px). Device: {device}.")
    metrics = encoder.info.get("metrics") or {}
    numbers: dict[str, Any] = {
        "source": str(encoder.source), "loaded_with": encoder.loaded_with, "data": data.name,
        "architecture": {k: encoder.info.get(k) for k in ("arch", "backbone_kwargs", "pool", "image_size", "small_stem",
                                                          "zero_init_residual", "expander")},
        "val_samples": len(val.labels), "train_samples": len(train.labels), "device": str(device),
        "health": _health_section(doc, spaces, stats_device, out),
        "linear_probe": _probe_section(doc, probabilities, val, spaces, names, metrics.get("val/probe_acc1"),
                                       options.map_method, seed, out),
    }
    numbers.update(_invariance_section(doc, encoder, capped(val_set, options.invariance_samples, seed), list(spaces),
                                       options, device, workers, out))
    numbers["discarded"] = _discarded_section(doc, encoder, capped(val_set, options.invariance_samples, seed), options,
                                              device)
    numbers["thresholds"] = thresholds_section(doc, val, probabilities, names, groups, options, out)
    numbers["groups"] = _groups_section(doc, encoder, train, val, names, groups, num_classes, options, stats_device,
                                        represent, out)
    numbers["seconds"] = time.monotonic() - started
    doc.text(f"Written in {numbers['seconds']:.0f} s.")
    (out / "report.md").write_text(doc.markdown() + "\n")
    (out / "report.html").write_text(doc.html(out) + "\n")
    (out / "report.json").write_text(json.dumps(numbers, indent=2, default=str) + "\n")
    return numbers
