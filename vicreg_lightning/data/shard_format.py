"""What ``vicreg-shard`` writes and ``data=shards`` reads, and the checks made before training.

A shard set is a folder::

    manifest.json           written last: the set is complete once it exists
    train/index.json, train/chunk-*.bin
    val/index.json, val/chunk-*.bin

Each split is a LitData chunked data set whose records are ``{"id", "image", "label"}``: ``id`` is
the sample's index in the image folder's split (what the views are keyed by), ``image`` the file's
original encoded bytes, ``label`` its class. Records are written in a seeded order
(:func:`stored_order`), so chunks mix classes; the order is a function of the seed and the count
alone, so a map-style read finds sample ``id`` at its position without an index of its own.

No torch or LitData import here: the command line checks a shard set before anything heavy loads.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

from vicreg_lightning.errors import DataError

FORMAT = "vicreg-shards"
# Bumped whenever a reader of this version could not read what an older writer wrote.
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INDEX = "index.json"  # LitData's
SPLITS = ("train", "val")
# Written first by vicreg-shard, removed with the manifest's arrival: an unfinished run.
UNFINISHED = ".vicreg-shard-unfinished"
REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "azure://", "hf://")


def litdata_offline() -> None:
    """Call before importing LitData: releases that ask PyPI for a newer version (at import, or
    as a data set is made) read this switch once. No network call at run time."""
    os.environ.setdefault("LITDATA_DISABLE_VERSION_CHECK", "1")


def is_remote(input_dir: str) -> bool:
    return str(input_dir).startswith(REMOTE_SCHEMES)


def stored_order(seed: int, count: int) -> np.ndarray:
    """``order[position] = id``: the ids of a split in the order they are stored. Sorted by a hash
    of ``(seed, id)``: the same on every platform and NumPy version, unlike a generator's stream."""
    keys = [hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest() for i in range(count)]
    return np.array(sorted(range(count), key=keys.__getitem__), dtype=np.int64)


def samples_hash(relative_paths: list[str], labels: list[int]) -> str:
    """sha256 of a split's sample list (path relative to the source root, label), in id order."""
    digest = hashlib.sha256()
    for path, label in zip(relative_paths, labels):
        digest.update(f"{path}\t{label}\n".encode())
    return digest.hexdigest()


def _unfinished_hint(folder: Path) -> str:
    if (folder / UNFINISHED).exists():
        return (f"data.input_dir={str(folder)!r}: an unfinished vicreg-shard run (no {MANIFEST}); run the same "
                "vicreg-shard command again to finish it")
    return (f"data.input_dir={str(folder)!r}: no shard set ({MANIFEST} missing); write one with "
            "vicreg-shard <image folder> <out dir>")


def read_manifest(text: str, where: str) -> dict[str, Any]:
    """The manifest's content, checked for its format and version."""
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"data.input_dir={where!r}: {MANIFEST} is not JSON ({e}); write the shards again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise DataError(f"data.input_dir={where!r}: {MANIFEST} is not a vicreg-shard manifest; "
                        "write the shards with vicreg-shard")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(
            f"data.input_dir={where!r}: shards of format version {version}, this vicreg-lightning reads version "
            f"{FORMAT_VERSION}; write them again with this version's vicreg-shard"
        )
    return manifest


def check_local(folder: Path) -> dict[str, Any]:
    """The manifest of a complete local shard set; :class:`DataError` for a missing or partial
    folder, an index that does not match the manifest, or a chunk file of the wrong size."""
    if not folder.is_dir():
        raise DataError(f"data.input_dir={str(folder)!r}: no such folder; write shards there with vicreg-shard")
    if not (folder / MANIFEST).is_file():
        raise DataError(_unfinished_hint(folder))
    manifest = read_manifest((folder / MANIFEST).read_text(), str(folder))
    for split in SPLITS:
        index_path = folder / split / INDEX
        if not index_path.is_file():
            raise DataError(f"data.input_dir={str(folder)!r}: {split}/{INDEX} is missing (a partial copy?); "
                            "copy the whole folder again")
        index = json.loads(index_path.read_text())
        check_index(index, manifest, split, str(folder))
        for chunk in index["chunks"]:
            path = folder / split / chunk["filename"]
            size = path.stat().st_size if path.is_file() else None
            if size != chunk["chunk_bytes"]:
                found = "missing" if size is None else f"{size} bytes, {chunk['chunk_bytes']} expected"
                raise DataError(f"data.input_dir={str(folder)!r}: chunk {split}/{chunk['filename']} is {found} "
                                "(truncated or partly copied); copy it again, or write the shards again")
    return manifest


def check_index(index: dict[str, Any], manifest: dict[str, Any], split: str, where: str) -> None:
    stored = sum(chunk["chunk_size"] for chunk in index.get("chunks", []))
    expected = manifest["splits"][split]["count"]
    if stored != expected:
        raise DataError(
            f"data.input_dir={where!r}: {split}/{INDEX} holds {stored} records, {MANIFEST} says {expected} "
            "(the manifest belongs to other shards); write the shards again"
        )


def fetch_remote_manifest(data: Any) -> dict[str, Any]:
    """The manifest (and each split's index, checked against it) of a shard set in an object store,
    through LitData's downloader; a :class:`DataError` when it does not answer within
    ``data.remote_timeout_s`` (a daemon thread: an unreachable host never hangs the run)."""
    result: dict[str, Any] = {}

    def fetch() -> None:
        try:
            result["texts"] = {name: _download_text(data, name) for name in (MANIFEST, *(f"{s}/{INDEX}" for s in SPLITS))}
        except Exception as e:  # noqa: BLE001 - any failure to reach it is reported as one line
            result["error"] = e

    thread = threading.Thread(target=fetch, daemon=True)
    thread.start()
    thread.join(data.remote_timeout_s)
    where = data.input_dir
    if thread.is_alive():
        raise DataError(f"data.input_dir={where!r}: no answer within {data.remote_timeout_s} s "
                        "(data.remote_timeout_s); check the URL, the network and the credentials")
    if "error" in result:
        reason = " ".join(str(result["error"]).split())[:300]
        raise DataError(f"data.input_dir={where!r}: cannot read {MANIFEST} ({type(result['error']).__name__}: {reason}); "
                        "check the URL, the network and the credentials")
    manifest = read_manifest(result["texts"][MANIFEST], where)
    for split in SPLITS:
        check_index(json.loads(result["texts"][f"{split}/{INDEX}"]), manifest, split, where)
    return manifest


def _download_text(data: Any, name: str) -> str:
    litdata_offline()
    from litdata.streaming.downloader import get_downloader

    with tempfile.TemporaryDirectory() as local:
        remote = data.input_dir.rstrip("/")
        downloader = get_downloader(remote, local, [])
        target = os.path.join(local, name.replace("/", "_"))
        downloader.download_file(f"{remote}/{name}", target)
        return Path(target).read_text()


def check_shards(data: Any) -> dict[str, Any]:
    """The manifest of ``data.input_dir``, checked (local or remote)."""
    if is_remote(data.input_dir):
        return fetch_remote_manifest(data)
    return check_local(Path(data.input_dir))
