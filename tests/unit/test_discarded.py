"""What the encoder discards (vicreg_lightning/report/discarded.py): linear read-outs of planted
attributes, where the right answer is known."""

from __future__ import annotations

import torch

from vicreg_lightning.report.discarded import ATTRIBUTES, discarded_information


def digits(count: int = 300) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits as 16-px RGB images in [0, 0.7]: brightness factors up to 1.4 never clip."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = torch.tensor(data.images[:count] / 16 * 0.7, dtype=torch.float32)[:, None].repeat(1, 3, 1, 1)
    return torch.nn.functional.interpolate(images, size=16, mode="bilinear"), torch.tensor(data.target[:count])


def normalised_projection(images: torch.Tensor) -> torch.Tensor:
    """Each image standardised over its own pixels, then a fixed random projection: blind to any
    scaling of its intensity."""
    flat = images.flatten(1)
    flat = (flat - flat.mean(dim=1, keepdim=True)) / flat.std(dim=1, keepdim=True)
    return flat @ torch.randn(flat.shape[1], 64, generator=torch.Generator().manual_seed(0))


def test_an_encoder_blind_to_intensity_discards_brightness_and_raw_pixels_keep_it():
    images, labels = digits()
    table = discarded_information({"pixels": lambda x: x.flatten(1), "normalised": normalised_projection},
                                  images, labels, ["brightness", "crop scale"], seed=0)
    print({a: {s: round(c["score"], 3) for s, c in row.items()} for a, row in table.items()})
    assert table["brightness"]["pixels"]["label"] == "kept" and table["brightness"]["pixels"]["score"] > 0.7
    assert table["brightness"]["normalised"]["label"] == "discarded"
    # Not blind to everything: the crop's scale and the class stay readable through the projection.
    assert table["crop scale"]["normalised"]["label"] != "discarded"
    assert table["class"]["normalised"]["metric"] == "accuracy" and table["class"]["normalised"]["score"] > 0.6


def test_variants_carry_the_values_they_were_made_with():
    images, _ = digits(8)
    brightness = ATTRIBUTES["brightness"]
    for value in (0.6, 1.4):
        torch.testing.assert_close(brightness.apply(images[0], value), images[0] * value)
    flipped = ATTRIBUTES["flip"].apply(images[0], 1)
    torch.testing.assert_close(flipped, images[0].flip(-1))
