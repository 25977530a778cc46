"""Groups from metadata (``--groups-csv``, vicreg_lightning/report/metadata.py): ids of folder and
in-memory data sets, the CSV's errors, and the must-show: a CSV that puts a planted subgroup in its
own group makes the threshold audit flag it at the 1% point, a grouping without one is not flagged."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import Subset

from vicreg_lightning.data.datasets import TensorImages, build_datasets
from vicreg_lightning.errors import UserError
from vicreg_lightning.features import Features
from vicreg_lightning.metrics.thresholds import match_audit
from vicreg_lightning.report.config import report_options
from vicreg_lightning.report.document import Document
from vicreg_lightning.report.metadata import metadata_groups, read_groups_csv, sample_ids
from vicreg_lightning.report.thresholds import thresholds_section

CLASSES, PER_CLASS, SIZE = 10, 40, 8


def planted_folder(root: Path, seed: int, squeeze: float = 1 / 6) -> tuple[list[str], set[str]]:
    """An image folder whose pixels are clustered by class (``val/`` holds CLASSES × PER_CLASS
    images, ``train/`` one per class), a share ``squeeze`` of the validation images squeezed towards
    one common image. Returns the validation files (relative to ``root``) and the squeezed ones."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLASSES, SIZE, SIZE, 3))
    common = 3.0 * rng.standard_normal((SIZE, SIZE, 3))
    files, squeezed = [], set()
    for split, count in (("train", 1), ("val", PER_CLASS)):
        for c in range(CLASSES):
            (root / split / f"class{c}").mkdir(parents=True, exist_ok=True)
            for i in range(count):
                x = centres[c] + 0.8 * rng.standard_normal((SIZE, SIZE, 3))
                name = f"{split}/class{c}/{i}.png"
                if split == "val":
                    files.append(name)
                    if rng.random() < squeeze:
                        x, _ = 0.3 * x + common, squeezed.add(name)
                cv2.imwrite(str(root / name), np.clip(128 + 12 * x, 0, 255).astype(np.uint8))
    return files, squeezed


def folder_data(root: Path, **overrides: object):
    return OmegaConf.create({"name": "imagefolder", "root": str(root), "train_dir": "train", "val_dir": "val",
                             "bad_images": "error", "val_fraction": 0.2, "split_seed": 0, **overrides})


def pixel_embeddings(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """The "encoder" of these tests: centred pixels, so that the planted squeeze is in the embeddings."""
    images, labels = zip(*(dataset[i] for i in range(len(dataset))))
    return torch.stack(images).flatten(1).float() - 128, torch.tensor(labels)


def write_csv(path: Path, rows: dict[str, str], header: str = "path,group") -> Path:
    path.write_text("\n".join([header, *(f"{key},{group}" for key, group in rows.items())]) + "\n")
    return path


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_csv_that_isolates_a_planted_subgroup_gets_it_flagged_and_a_random_csv_does_not(tmp_path, seed):
    files, squeezed = planted_folder(tmp_path / "data", seed)
    data = folder_data(tmp_path / "data")
    train_set, val_set, _ = build_datasets(data)
    z, labels = pixel_embeddings(val_set)
    planted = write_csv(tmp_path / "planted.csv", {f: "site B" if f in squeezed else "site A" for f in files})
    groups = metadata_groups(planted, val_set, val_set, train_set, data.root)
    assert groups.count("site B") == len(squeezed) > 0
    at_one_percent = match_audit(z, labels, groups)[1]
    assert at_one_percent["point"] == "FMR 0.01" and at_one_percent["global_fmr"] <= 0.01
    assert at_one_percent["flagged"] and at_one_percent["worst"] == "site B", at_one_percent["fmr_ratio"]
    assert at_one_percent["fmr_ratio"] > at_one_percent["chance_ratio"] > 1

    # The control: the same kind of data with nothing squeezed, and sites drawn at random.
    files, _ = planted_folder(tmp_path / "control", seed, squeeze=0)
    data = folder_data(tmp_path / "control")
    train_set, val_set, _ = build_datasets(data)
    z, labels = pixel_embeddings(val_set)
    rng = np.random.default_rng(100 + seed)
    random_rows = {f: f"site {'ABC'[rng.integers(3)]}" for f in files}
    groups = metadata_groups(write_csv(tmp_path / "random.csv", random_rows), val_set, val_set, train_set, data.root)
    audit = match_audit(z, labels, groups)
    assert not any(row["flagged"] for row in audit), [(row["point"], row["fmr_ratio"]) for row in audit]


def test_ids_are_paths_under_the_root_or_positions_in_memory(tmp_path):
    files, _ = planted_folder(tmp_path / "data", 0)
    train_set, val_set, _ = build_datasets(folder_data(tmp_path / "data"))
    assert sample_ids(val_set, str(tmp_path / "data")) == sorted(files, key=lambda f: (f.split("/")[1], f))
    # Without a validation folder: a seeded split of the training folder (here val/), a Subset of it.
    _, split_val, _ = build_datasets(folder_data(tmp_path / "data", train_dir="val", val_dir="none"))
    assert isinstance(split_val, Subset)
    ids = sample_ids(split_val, str(tmp_path / "data"))
    assert set(ids) < set(files) and len(set(ids)) == len(split_val) == 80
    memory = TensorImages(torch.zeros(5, 3, 4, 4, dtype=torch.uint8), torch.arange(5))
    assert sample_ids(Subset(memory, [3, 1]), "") == ["3", "1"]


def test_bad_csvs_get_one_message_naming_the_file_and_the_fix(tmp_path):
    files, _ = planted_folder(tmp_path / "data", 0)
    data = folder_data(tmp_path / "data")
    train_set, val_set, _ = build_datasets(data)
    good = {f: "site A" if i % 2 else "site B" for i, f in enumerate(files)}

    def error(rows: dict[str, str] | None = None, text: str | None = None) -> str:
        path = tmp_path / "groups.csv"
        write_csv(path, rows) if text is None else path.write_text(text)
        with pytest.raises(UserError) as info:
            metadata_groups(path, val_set, val_set, train_set, data.root)
        return str(info.value)

    assert "1 of the 400 validation images have no row" in error(dict(list(good.items())[1:]))
    assert "1 rows name no image (e.g. 'val/class0/999.png')" in error({**good, "val/class0/999.png": "site A"})
    assert "two groups" in error({f: "site A" for f in files})
    # The file's own line numbers, blank lines counted.
    assert "line 5: 'val/class0/0.png' is in two groups" in error(text=f"path,group\n\n{files[0]},a\n\n{files[0]},b\n")
    assert "is not 'path,group'" in error(text="a,b,c\n")
    assert "empty" in error(text="\n")
    with pytest.raises(UserError, match="cannot be read"):
        read_groups_csv(tmp_path / "missing.csv")
    # A header names the columns (others ignored, any order); rows for training images are allowed.
    # Absolute paths under data.root are taken relative to it.
    text = "group,site_id,path\n" + "".join(f"{g},x,{tmp_path / 'data' / f}\n" for f, g in good.items()) + \
        "site C,x,./train/class0/0.png\n"
    (tmp_path / "groups.csv").write_text(text)
    assert metadata_groups(tmp_path / "groups.csv", val_set, val_set, train_set, data.root) == \
        [good[f] for f in sample_ids(val_set, data.root)]


@pytest.mark.parametrize("grouping", ["classes", "metadata"])
def test_the_threshold_section_audits_both_rules_per_group(tmp_path, grouping):
    files, squeezed = planted_folder(tmp_path / "data", 0)
    data = folder_data(tmp_path / "data")
    train_set, val_set, _ = build_datasets(data)
    z, labels = pixel_embeddings(val_set)
    csv = write_csv(tmp_path / "g.csv", {f: "site B" if f in squeezed else "site A" for f in files})
    groups = metadata_groups(csv, val_set, val_set, train_set, data.root) if grouping == "metadata" else None
    options = report_options(groups_csv=str(csv) if groups else None)
    # A probe that says "class 0" too often in site B (or for class 1, when grouped by class).
    probabilities = torch.nn.functional.one_hot(labels, CLASSES).double() * 0.6 + 0.04
    raised = torch.tensor([g == "site B" for g in groups]) if groups else labels == 1
    probabilities[raised, 0] += torch.rand(int(raised.sum()), generator=torch.Generator().manual_seed(0)).double()
    doc = Document("test")
    numbers = thresholds_section(doc, Features(z, None, labels), probabilities.numpy(), [str(c) for c in range(10)],
                                 groups, options, tmp_path)["thresholds"]
    assert (tmp_path / "thresholds.png").stat().st_size > 10_000
    assert numbers["groups"] == grouping and numbers["pairs"] == ("within" if groups else "involving")
    probe = {row["point"]: row for row in numbers["probe"]}["FPR 0.01"]
    assert probe["worst_class"] == "0" and probe["flagged"]
    assert probe["worst"] == ("site B" if groups else "class 1")
    expected_groups = {"site A", "site B"} if groups else {f"class {c}" for c in range(10)}
    assert set(probe["groups"]) == expected_groups == set(numbers["operating_points"][0]["groups"])
    assert {"images", "positive_rate", "error_rate", "fpr", "mean_error_rate"} <= set(probe["groups"]["site A"
                                                                                                       if groups else "class 1"])
    assert "probe 'class 0': positive rate" in doc.markdown()


def test_two_sites_that_each_hold_one_class_leave_the_audits_nothing_to_compare(tmp_path):
    files, _ = planted_folder(tmp_path / "data", 0)
    data = folder_data(tmp_path / "data")
    train_set, val_set, _ = build_datasets(data)
    z, labels = pixel_embeddings(val_set)
    csv = write_csv(tmp_path / "g.csv", {f: f"site {f.split('/')[1]}" for f in files})  # site = class
    groups = metadata_groups(csv, val_set, val_set, train_set, data.root)
    # Two classes in two sites: a decision's negatives all sit in the other site.
    two = torch.nonzero(labels < 2).flatten()
    doc = Document("test")
    probabilities = torch.nn.functional.one_hot(labels[two], 2).double().numpy()
    numbers = thresholds_section(doc, Features(z[two], None, labels[two]), probabilities, ["0", "1"],
                                 [groups[i] for i in two], report_options(groups_csv=str(csv)), tmp_path)["thresholds"]
    assert numbers["probe"] == [] and "No probe decision can be compared" in doc.markdown()
    # Within a site every pair is genuine: no group can be compared, and report.json gets None, not NaN.
    assert all(row["fmr_ratio"] is None and not row["flagged"] for row in numbers["operating_points"])
    assert (tmp_path / "thresholds.png").exists()
