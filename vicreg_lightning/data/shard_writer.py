"""``vicreg-shard``: an image folder (ImageFolder or ImageNet layout) written as a LitData shard set
(:mod:`vicreg_lightning.data.shard_format`) that ``data=shards`` trains on.

The folder is read as ``data=imagefolder`` / ``data=imagenet`` read it (the same splits, the same
sample indices, the same ``data.bad_images`` rule, checked before anything is written), and each
file's encoded bytes are stored unchanged: the shards decode to exactly the folder's images.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vicreg_lightning.data.shard_format import (
    FORMAT, FORMAT_VERSION, MANIFEST, SPLITS, UNFINISHED, litdata_offline, samples_hash, stored_order,
)
from vicreg_lightning.errors import DataError

SHARD_YAML = Path(__file__).resolve().parents[1] / "conf" / "shard.yaml"
PARTIAL_MANIFEST = f"{MANIFEST}.partial"  # renamed into place: a manifest is never half written
# Records read ahead of the writer at a time: bounds the memory the reading pool holds.
_WINDOW = 512


def shard_defaults() -> dict[str, Any]:
    """``conf/shard.yaml``: every option's value when none is given."""
    return OmegaConf.to_container(OmegaConf.load(SHARD_YAML))


def folder_samples(dataset: Any) -> tuple[list[str], list[int]]:
    """``(paths, labels)`` of a split of :func:`~vicreg_lightning.data.datasets.build_datasets`,
    in the split's own index order (an ImageFolder, or a Subset of one)."""
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        samples = [dataset.dataset.samples[i] for i in dataset.indices]
    else:
        samples = dataset.samples
    return [path for path, _ in samples], [int(label) for _, label in samples]


def classes_of(dataset: Any) -> list[Any]:
    base = getattr(dataset, "dataset", dataset)
    return [list(c) if isinstance(c, tuple) else c for c in base.classes]


def _check_output(out: Path, request: dict[str, Any]) -> None:
    """``out`` may be new, empty, or the unfinished run of the same request; anything else is
    refused before the image folder is read, nothing in it touched."""
    if out.exists() and not out.is_dir():
        raise DataError(f"{str(out)!r} is a file; give a new or empty folder for the shards")
    entries = set(os.listdir(out)) if out.is_dir() else set()
    if MANIFEST in entries:
        raise DataError(f"{str(out)!r} already holds a shard set ({MANIFEST}); give a new or empty folder")
    if UNFINISHED in entries and entries <= {UNFINISHED, PARTIAL_MANIFEST, *SPLITS}:
        earlier = json.loads((out / UNFINISHED).read_text())
        if earlier != request:
            settings = {**request["data"], **request}, {**earlier.get("data", {}), **earlier}
            differ = "; ".join(f"{key} {settings[1].get(key)!r} there, {value!r} here"
                               for key, value in settings[0].items() if key != "data" and settings[1].get(key) != value)
            raise DataError(
                f"{str(out)!r} holds an unfinished vicreg-shard run of other settings ({differ}); run that "
                "command again to finish it, or give a new folder"
            )
    elif entries:
        raise DataError(f"{str(out)!r} is not empty ({len(entries)} entries); give a new or empty folder for the shards")


def _claim_output(out: Path, request: dict[str, Any]) -> None:
    """Mark ``out`` as this run's until its manifest exists; an unfinished earlier run's splits
    (its own files, checked by :func:`_check_output`) are written again from the start."""
    out.mkdir(parents=True, exist_ok=True)
    (out / UNFINISHED).write_text(json.dumps(request))
    for split in SPLITS:
        shutil.rmtree(out / split, ignore_errors=True)


def _read_decodable(path: str) -> bytes:
    """The file's bytes, once they decode: the check before writing reads each file's ends only, and
    a corrupt body written into a shard would stop a training run mid-epoch."""
    from vicreg_lightning.data.datasets import UNDECODABLE, decode_rgb

    encoded = Path(path).read_bytes()
    try:
        decode_rgb(encoded)
    except UNDECODABLE as error:
        raise DataError(f"{path}: its body does not decode ({error}); fix or remove it, then run the same "
                        "vicreg-shard command again (it starts this folder over)") from None
    return encoded


def _read_in_order(paths: list[str], threads: int) -> Iterator[bytes]:
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for start in range(0, len(paths), _WINDOW):
            yield from pool.map(_read_decodable, paths[start:start + _WINDOW])


def write_split(folder: Path, paths: list[str], labels: list[int], seed: int, chunk_bytes: str, threads: int,
                progress: Any) -> None:
    """One split's records, in :func:`stored_order`, into LitData chunks and ``index.json``."""
    litdata_offline()
    from litdata.streaming.writer import BinaryWriter

    order = stored_order(seed, len(paths)).tolist()
    writer = BinaryWriter(str(folder), chunk_bytes=chunk_bytes)
    for position, (sample_id, encoded) in enumerate(zip(order, _read_in_order([paths[i] for i in order], threads))):
        writer.add_item(position, {"id": sample_id, "image": encoded, "label": labels[sample_id]})
        progress.update(1)
    writer.done()
    writer.merge(num_workers=1)


def write_shards(data: Any, out: Path, seed: int, chunk_bytes: str, read_threads: int) -> dict[str, Any]:
    """Write the train and val splits of the data config ``data`` (an image folder) as shards in
    ``out``; the manifest, written last."""
    from tqdm import tqdm

    from vicreg_lightning.data.datasets import build_datasets

    out = Path(out)
    # What a restart must repeat: the folder as read (every data.* key), the order and the chunks.
    read_as = {key: data[key] for key in ("name", "train_dir", "val_dir", "val_fraction", "split_seed", "bad_images")}
    request = {"data": {**read_as, "root": str(Path(data.root).resolve())}, "seed": seed, "chunk_bytes": chunk_bytes}
    _check_output(out, request)
    train, val, _ = build_datasets(data)  # the folder's checks: no images, bad images, class folders
    _claim_output(out, request)
    splits = dict(zip(SPLITS, (folder_samples(train), folder_samples(val))))
    manifest: dict[str, Any] = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "seed": seed, "source": request,
        "classes": classes_of(train), "splits": {},
    }
    total = sum(len(paths) for paths, _ in splits.values())
    with tqdm(total=total, desc=f"vicreg-shard {out}", unit="img", disable=None) as progress:
        for split, (paths, labels) in splits.items():
            write_split(out / split, paths, labels, seed, chunk_bytes, read_threads, progress)
            relative = [os.path.relpath(p, data.root) for p in paths]
            manifest["splits"][split] = {"count": len(paths), "samples_sha256": samples_hash(relative, labels),
                                         "labels": labels}
    (out / PARTIAL_MANIFEST).write_text(json.dumps(manifest))
    os.replace(out / PARTIAL_MANIFEST, out / MANIFEST)
    (out / UNFINISHED).unlink()
    return manifest
