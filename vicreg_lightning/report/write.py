"""The report, written: :func:`write_report` evaluates an encoder on its data and writes each
section in turn (spectrum and health, linear probe and map, augmentation recipe and invariance,
what is discarded, threshold rules, stability across groups), each from its own module, which owns
its measurement, its table, its figure and its keys of ``report.json``; then ``report.md``,
``report.html`` and ``report.json``."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from vicreg_lightning.data.augment import eval_transform
from vicreg_lightning.data.datasets import Transformed, build_datasets
from vicreg_lightning.errors import UserError
from vicreg_lightning.evaluate import pick_device
from vicreg_lightning.features import Features
from vicreg_lightning.report import groups, health, invariance, probes, thresholds
from vicreg_lightning.report.config import ReportOptions
from vicreg_lightning.report.discarded import discarded_section
from vicreg_lightning.report.document import Document
from vicreg_lightning.report.groups import check_group_sizes, groups_section
from vicreg_lightning.report.health import health_section
from vicreg_lightning.report.invariance import invariance_section
from vicreg_lightning.report.metadata import metadata_groups
from vicreg_lightning.report.probes import linear_probe, probe_section
from vicreg_lightning.report.source import SPACES, LoadedEncoder, capped, extract
from vicreg_lightning.report.thresholds import thresholds_section

FIGURES: tuple[str, ...] = (*health.FIGURES, *probes.FIGURES, *invariance.FIGURES, *groups.FIGURES, *thresholds.FIGURES)


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
    csv_groups = metadata_groups(options.groups_csv, capped(val_set, options.max_samples, seed), val_set, train_set,
                                 data.root) if options.groups_csv else None

    def represent(dataset: Dataset) -> Features:
        transformed = Transformed(capped(dataset, options.max_samples, seed), eval_transform(aug))
        return extract(encoder.backbone, encoder.expander, transformed, device, options.batch_size, workers)

    val, train = represent(val_set), represent(train_set)
    check_group_sizes(val.labels, csv_groups, options)
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
    }
    # Each section writes its part of the document and its figures, and returns its report.json keys.
    numbers.update(health_section(doc, spaces, stats_device, out))
    numbers.update(probe_section(doc, probabilities, val, spaces, names, metrics.get("val/probe_acc1"),
                                 options.map_method, seed, out))
    invariance_images = capped(val_set, options.invariance_samples, seed)
    numbers.update(invariance_section(doc, encoder, invariance_images, list(spaces), options, device, workers, out))
    numbers.update(discarded_section(doc, encoder, invariance_images, options, device))
    numbers.update(thresholds_section(doc, val, probabilities, names, csv_groups, options, out))
    numbers.update(groups_section(doc, encoder, train, val, names, csv_groups, num_classes, options, stats_device,
                                  represent, out))
    numbers["seconds"] = time.monotonic() - started
    doc.text(f"Written in {numbers['seconds']:.0f} s.")
    (out / "report.md").write_text(doc.markdown() + "\n")
    (out / "report.html").write_text(doc.html(out) + "\n")
    (out / "report.json").write_text(json.dumps(numbers, indent=2, default=str) + "\n")
    return numbers
