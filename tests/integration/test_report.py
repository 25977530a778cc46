"""``python -m vicreg_lightning.report`` on real runs: the folder it writes, the invariance table's
recipe, bad input, and (slow) that pretraining on digits buys invariance to the augmentations it
was trained with."""

from __future__ import annotations

import json
import os
import re
import runpy
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from omegaconf import OmegaConf

from tests import warm
from tests.runs import ROOT
from vicreg_lightning.data.datasets import build_datasets
from vicreg_lightning.cli import report as report_command
from vicreg_lightning.report import (
    FAMILIES,
    FIGURES,
    load_for_report,
    measure_invariance,
    untrained_twin,
)


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tiny_report(tiny_digits_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report of a 2-step checkpoint, written by the command lines a user types, with the
    metadata groups of the worked example (docs/report-results.md)."""
    out = tmp_path_factory.mktemp("tiny_report")
    # Groups from metadata, made by the worked example of docs/report-results.md (its command line, in this process).
    groups = out / "digits_ink.csv"
    with mock.patch.object(sys, "argv", ["digits_ink_groups.py", str(tiny_digits_run), str(groups)]):
        runpy.run_path(str(ROOT / "examples" / "digits_ink_groups.py"), run_name="__main__")
    # One OpenMP thread: the suite runs 2 xdist workers on 2 cores, and a second thread per process
    # oversubscribes them; OpenMP's spin-waiting then makes LAPACK and t-SNE calls up to 300x slower
    # (measured here: eigvalsh of 360x360 in 0.012 s with 1 thread, 4.5 s with 2 on a busy machine).
    proc = warm.run(
        [sys.executable, "-m", "vicreg_lightning.report", str(tiny_digits_run / "checkpoints" / "last.ckpt"),
         "--out", str(out), "--groups-csv", str(groups)],
        timeout=600, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _table_after(markdown: str, heading_start: str) -> list[dict[str, str]]:
    """The first Markdown table under the ``## <heading_start>...`` heading, as dicts."""
    section = markdown.split(f"## {heading_start}", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        if len(cells) != len(header):
            break
        rows.append(dict(zip(header, cells, strict=True)))
    return rows


def _bad_inputs(tmp_path: Path, checkpoint: Path) -> list[tuple[list[str], str]]:
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"half a checkpoint")
    not_a_checkpoint = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {"backbone.conv1.weight": torch.zeros(1)}}, not_a_checkpoint)
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    # Every validation image its own group (the digits' 360: ids 0 to 359).
    singletons = tmp_path / "singletons.csv"
    singletons.write_text("path,group\n" + "".join(f"{i},image{i}\n" for i in range(360)))
    return [
        ([str(tmp_path / "no_such.ckpt")], "no such file"),
        ([str(corrupt)], "corrupt"),
        ([str(not_a_checkpoint)], "not a vicreg-lightning"),
        ([str(empty)], "checkpoints/last.ckpt"),
        ([str(checkpoint), "--data", "nonexistent"], "data.name"),
        ([str(checkpoint), "--out", str(a_file / "report")], "--out"),
        # Not writable even for root (the tests' CI user): a read-only --out.
        ([str(checkpoint), "--out", "/proc/vicreg-report"], "--out '/proc/vicreg-report': cannot write there"),
        ([str(checkpoint), "--out", str(tmp_path / "r"), "--groups-csv", str(a_file)], "is not 'path,group'"),
        ([str(checkpoint), "--out", str(tmp_path / "few"), "--max-samples", "2"],
         "--max-samples=2 leaves no class with 2 validation images: group statistics need 2 images of a group"),
        ([str(checkpoint), "--out", str(tmp_path / "alone"), "--groups-csv", str(singletons)],
         "no group holds 2 labelled validation images: group statistics need 2 images of a group or more; merge"),
    ]


@pytest.mark.xdist_group("tiny_report")  # the report is written once, on one worker
def test_report_holds_every_figure_and_references_it(tiny_report: Path) -> None:
    markdown = (tiny_report / "report.md").read_text()
    page = (tiny_report / "report.html").read_text()
    for name in FIGURES:
        assert (tiny_report / name).read_bytes()[:8] == PNG_MAGIC, name
        assert f"]({name})" in markdown, name
    assert set(FIGURES) <= {p.name for p in tiny_report.glob("*.png")}
    # The HTML page carries the same figures, inlined.
    assert page.count("data:image/png;base64,") == len(FIGURES)
    for heading in re.findall(r"^## (.+)$", markdown, flags=re.M):
        assert heading.replace('"', "&quot;") in page
    # The documented keys of the sections on what is discarded and on threshold rules.
    numbers = json.loads((tiny_report / "report.json").read_text())
    discarded = numbers["discarded"]
    assert discarded["attributes"] == ["brightness", "contrast", "blur", "crop scale", "crop position"]
    for row in discarded["read_outs"].values():
        assert set(row) == {"pixels", "trained features", "trained embeddings", "untrained features"}
        assert all(set(cell) == {"metric", "score", "decodability", "label"} for cell in row.values())
    thresholds = numbers["thresholds"]
    assert (thresholds["groups"], thresholds["pairs"]) == ("metadata", "within")
    audit = thresholds["operating_points"]
    assert [row["point"] for row in audit] == ["FMR 0.1", "FMR 0.01", "FMR 0.001", "equal error"]
    assert all(row["global_fmr"] <= float(row["point"][4:]) for row in audit[:3])
    ink = {"light ink", "medium ink", "heavy ink"}
    assert set(audit[0]["groups"]) == ink and isinstance(audit[0]["flagged"], bool)
    assert all(row["chance_ratio"] >= 1 for row in audit)
    probe = thresholds["probe"]
    assert [row["point"] for row in probe] == ["FPR 0.1", "FPR 0.01", "FPR 0.001", "equal error"]
    assert set(probe[1]["groups"]) == ink and len(probe[1]["classes"]) == 10
    assert {"positive_rate", "error_rate", "fpr", "mean_error_rate"} <= set(probe[1]["groups"]["light ink"])
    # The stability section reads the same groups (120 validation images each).
    assert {g["name"]: g["size"] for g in numbers["groups"]} == dict.fromkeys(ink, 120)


@pytest.mark.xdist_group("tiny_report")
def test_invariance_table_marks_the_families_of_the_training_recipe(
    tiny_report: Path, tiny_digits_run: Path,
) -> None:
    augment = OmegaConf.load(tiny_digits_run / ".hydra" / "config.yaml").augment
    views = (augment.view_a, augment.view_b)
    # Read straight from the run's config: probability > 0 in a view (the crop: not the whole image).
    expected = {
        "crop": list(augment.crop_scale) != [1.0, 1.0],
        "flip": augment.hflip_prob > 0,
        "jitter": augment.jitter_prob > 0,
        "grayscale": augment.grayscale_prob > 0,
        "blur": any(v.blur_prob > 0 for v in views),
        "solarize": any(v.solarize_prob > 0 for v in views),
    }
    assert expected == {"crop": True, "flip": False, "jitter": True, "grayscale": False, "blur": True,
                        "solarize": False}  # the digits recipe
    rows = _table_after((tiny_report / "report.md").read_text(), 'What counts as "same"')
    assert [row["family"] for row in rows] == list(FAMILIES)
    assert {row["family"]: row["in training recipe"] == "yes" for row in rows} == expected
    for row in rows:
        for column in ("invariance (features)", "invariance (embeddings)", "untrained (features)"):
            float(row[column])  # a number in every cell


def test_bad_input_gets_one_line_and_exit_code_2(tmp_path: Path, tiny_digits_run: Path, capsys) -> None:
    for argv, expected in _bad_inputs(tmp_path, tiny_digits_run / "checkpoints" / "last.ckpt"):
        with pytest.raises(SystemExit) as exit_info:
            report_command(argv)
        assert exit_info.value.code == 2, argv
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (argv, lines)
        assert expected in lines[0], (argv, lines[0])


@pytest.mark.slow
@pytest.mark.xdist_group("default_run")
def test_pretraining_buys_invariance_to_the_augmentations_it_was_trained_with(default_run: Path) -> None:
    """The must-show: for each family in the digits recipe (crop, jitter, blur; no flip, grayscale or
    solarisation), the pretrained backbone's features are more invariant than those of a randomly
    initialised backbone of the same architecture, for every one of three initialisations."""
    encoder = load_for_report(default_run)
    augment = encoder.augment
    trained_with = [family for family, used in (
        ("crop", list(augment.crop_scale) != [1.0, 1.0]), ("flip", augment.hflip_prob > 0),
        ("jitter", augment.jitter_prob > 0), ("grayscale", augment.grayscale_prob > 0),
        ("blur", augment.view_a.blur_prob > 0 or augment.view_b.blur_prob > 0),
        ("solarize", augment.view_a.solarize_prob > 0 or augment.view_b.solarize_prob > 0),
    ) if used]
    assert trained_with == ["crop", "jitter", "blur"]
    _, val_set, _ = build_datasets(encoder.data)
    encoders = {"pretrained": (encoder.backbone, encoder.expander)}
    encoders |= {f"untrained (seed {seed})": untrained_twin(encoder.info, seed) for seed in range(3)}
    results = measure_invariance(encoders, val_set, augment, families=trained_with)
    scores = {name: {family: result.scores["features"].score for family, result in by_family.items()}
              for name, by_family in results.items()}
    for name, by_family in scores.items():
        print(name, ", ".join(f"{family} {score:.3f}" for family, score in by_family.items()))
    for family in trained_with:
        best_untrained = max(scores[name][family] for name in scores if name != "pretrained")
        assert scores["pretrained"][family] > best_untrained, (family, scores)
