"""Groups from metadata: a CSV of ``path,group`` rows (``--groups-csv``) giving each validation
image a group (site, device, population) for the stability section and the threshold audit.

A validation image's id is its file's path relative to ``data.root`` for data read from files
(``imagefolder``, ``imagenet``: ``val/cat/0001.png``), and its position in the validation split for
the in-memory data sets (``digits``, ``cifar10``/``cifar100``: the test set, ``stl10``: the test
split; ``0`` to N−1); an absolute path under ``data.root`` is taken relative to it. A header row
naming the columns ``path`` and ``group`` is optional (other columns are ignored then); without
one, every row is exactly ``path,group``. Blank lines are skipped.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from torch.utils.data import Dataset, Subset

from vicreg_lightning.data.datasets import KeyedSamples, TensorImages, Transformed
from vicreg_lightning.errors import UserError

FLAG = "--groups-csv"


def sample_ids(dataset: Dataset, root: str) -> list[str]:
    """The id of each sample of ``dataset`` (see the module's docstring), through any
    :class:`~torch.utils.data.Subset` and transform wrappers."""
    if isinstance(dataset, Subset):
        inner = sample_ids(dataset.dataset, root)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, (Transformed, KeyedSamples)):
        return sample_ids(dataset.dataset, root)
    if isinstance(dataset, TensorImages):
        return [str(i) for i in range(len(dataset))]
    samples = getattr(dataset, "samples", None)  # torchvision's ImageFolder and ImageNet
    if samples is None:
        raise UserError(f"{FLAG}: the {type(dataset).__name__} data set has no sample ids; groups from a CSV "
                        "need an image folder or one of the built-in data sets")
    return [os.path.relpath(path, root).replace(os.sep, "/") for path, _ in samples]


def read_groups_csv(path: str | Path, root: str = "") -> dict[str, str]:
    """``{path: group}`` from the CSV (an absolute path under ``root`` made relative to it); a
    :class:`UserError` names the file, the line and the fix."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            # (the file's line number, the row), blank rows left out
            rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except OSError as e:
        raise UserError(f"{FLAG} {str(path)!r}: cannot be read ({e.strerror or e})") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{FLAG} {str(path)!r}: not a UTF-8 CSV ({e})") from None
    if not rows:
        raise UserError(f"{FLAG} {str(path)!r}: empty; give one row 'path,group' per validation image")
    header = [cell.strip().lower() for cell in rows[0][1]]
    has_header = {"path", "group"} <= set(header)
    columns = (header.index("path"), header.index("group")) if has_header else (0, 1)
    groups: dict[str, str] = {}
    for line, row in rows[1:] if has_header else rows:
        if len(row) <= max(columns) or (not has_header and len(row) != 2):
            raise UserError(f"{FLAG} {str(path)!r}, line {line}: {','.join(row)!r} is not 'path,group' "
                            "(or give a header row naming the columns path and group)")
        key, group = _normalised(row[columns[0]], root), row[columns[1]].strip()
        if not key or not group:
            raise UserError(f"{FLAG} {str(path)!r}, line {line}: an empty path or group in {','.join(row)!r}")
        if groups.setdefault(key, group) != group:
            raise UserError(f"{FLAG} {str(path)!r}, line {line}: {key!r} is in two groups "
                            f"({groups[key]!r} and {group!r}); give each image one group")
    return groups


def metadata_groups(path: str | Path, dataset: Dataset, validation_set: Dataset, train_set: Dataset,
                    root: str) -> list[str]:
    """The group of each sample of ``dataset`` (a draw from ``validation_set``) from the CSV at
    ``path``: every sample needs a row; a row that names no image (a typo, another root) is an
    error too, rows for training images of a folder data set are allowed. At least two groups."""
    groups = read_groups_csv(path, root)
    ids = sample_ids(dataset, root)
    missing = [i for i in ids if i not in groups]
    if missing:
        raise UserError(f"{FLAG} {str(path)!r}: {len(missing)} of the {len(ids)} validation images have no row "
                        f"(e.g. {missing[0]!r}); ids are {_id_rule(validation_set)}")
    known = set(sample_ids(validation_set, root))
    unknown = [key for key in groups if key not in known]
    if unknown and not _in_memory(validation_set):  # positions of the training split would be other images
        known = set(sample_ids(train_set, root))
        unknown = [key for key in unknown if key not in known]
    if unknown:
        raise UserError(f"{FLAG} {str(path)!r}: {len(unknown)} rows name no image (e.g. {unknown[0]!r}); ids are "
                        f"{_id_rule(validation_set)}")
    chosen = [groups[i] for i in ids]
    if len(set(chosen)) < 2:
        raise UserError(f"{FLAG} {str(path)!r}: every validation image is in group {chosen[0]!r}; give at least "
                        "two groups")
    return chosen


def _normalised(path: str, root: str) -> str:
    path = path.strip()
    if root and os.path.isabs(path):
        path = os.path.relpath(path, root)
    path = path.replace("\\", "/")
    return path[2:] if path.startswith("./") else path


def _in_memory(dataset: Dataset) -> bool:
    while isinstance(dataset, (Subset, Transformed, KeyedSamples)):
        dataset = dataset.dataset
    return isinstance(dataset, TensorImages)


def _id_rule(dataset: Dataset) -> str:
    if _in_memory(dataset):
        return f"positions in the validation split, 0 to {len(dataset) - 1}"  # type: ignore[arg-type]
    return "paths relative to data.root, such as 'val/<class>/<file>'"
