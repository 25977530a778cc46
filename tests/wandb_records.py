"""Read back what W&B wrote into an offline run (``run-<id>.wandb``), without the network.

The file is W&B's transaction log: a 7-byte header (":W&B", magic, version), then records in
LevelDB's log format (32 KiB blocks; each chunk: checksum, length, type) holding protobuf
``Record`` messages. wandb ≥ 0.19 has no Python reader of its own any more.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

BLOCK, CHUNK_HEADER = 32 * 1024, 7
FULL, LAST = 1, 4


def records(path: Path) -> Iterator[Any]:
    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, chunks = CHUNK_HEADER, []
    while pos + CHUNK_HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK_HEADER:  # block trailer padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunks.append(data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length])
        pos += CHUNK_HEADER + length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def _items(items: Any) -> dict[str, Any]:
    return {(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in items}


@dataclass
class OfflineRun:
    run_id: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def logged(self, key: str) -> list[Any]:
        return [row[key] for row in self.history if key in row]


def read_offline_run(path: Path) -> OfflineRun:
    run = OfflineRun()
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.group, run.tags = record.run.run_id, record.run.run_group, list(record.run.tags)
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
    return run
