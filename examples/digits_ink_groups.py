"""Metadata groups for the report's worked example: the digits a run validates on, grouped by how
much ink each image holds (a stand-in for a population attribute such as a writer's pen).

    python examples/digits_ink_groups.py outputs/train/runs/<time> digits_ink.csv
    python -m vicreg_lightning.report outputs/train/runs/<time> --groups-csv digits_ink.csv

Digits live in memory, so a row's path is the image's position in the run's validation split (its
``data.split_seed`` and ``data.val_fraction``); for an image folder it is the file's path relative
to ``data.root`` (vicreg_lightning/report/metadata.py).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import torch

from vicreg_lightning.data.datasets import build_datasets
from vicreg_lightning.report import load_for_report

GROUPS = ("light ink", "medium ink", "heavy ink")  # the thirds of the mean pixel value


def ink_groups(run: Path) -> list[str]:
    """The group of each validation image of the run's data set, in the split's order."""
    _, val_set, _ = build_datasets(load_for_report(run).data)
    ink = torch.stack([image.float().mean() for image, _ in val_set])
    thirds = torch.quantile(ink, torch.tensor([1 / 3, 2 / 3]))
    return [GROUPS[int(third)] for third in torch.bucketize(ink, thirds, right=True)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run directory, checkpoint or export folder of a digits run")
    parser.add_argument("out", type=Path, help="the CSV to write")
    args = parser.parse_args()
    with open(args.out, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "group"])
        writer.writerows(enumerate(ink_groups(args.run)))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
