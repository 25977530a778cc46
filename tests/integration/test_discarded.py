"""What the pretrained digits encoder discards (vicreg_lightning/report/discarded.py)."""

from __future__ import annotations

import pytest
import torch

from vicreg_lightning.report.discarded import discarded_information, reference_images, representations
from vicreg_lightning.report.source import load_for_report


@pytest.mark.slow
@pytest.mark.xdist_group("default_run")
def test_the_pretrained_digits_encoder_keeps_the_class_and_less_brightness_than_pixels(default_run):
    from vicreg_lightning.data.datasets import build_datasets

    encoder = load_for_report(default_run)
    _, val_set, _ = build_datasets(encoder.data)
    images, labels = reference_images(val_set, encoder.augment, 360)
    spaces = representations({"trained": (encoder.backbone, encoder.expander)}, encoder.augment, torch.device("cpu"))
    table = discarded_information({k: spaces[k] for k in ("pixels", "trained features")}, images, labels,
                                  ["brightness"], seed=0)
    print({attribute: {space: round(cell["score"], 3) for space, cell in row.items()} for attribute, row in table.items()})
    assert table["class"]["trained features"]["score"] >= 0.95
    assert table["brightness"]["trained features"]["score"] < table["brightness"]["pixels"]["score"]
