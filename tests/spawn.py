"""Run a function in real processes joined by a gloo process group, and collect their results."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, fn: Callable[[int], Any], results: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results[rank] = fn(rank)
    finally:
        dist.destroy_process_group()


def run_ranks(fn: Callable[[int], Any], world: int = 2) -> dict[int, Any]:
    """``{rank: fn(rank)}`` from ``world`` spawned processes (``fn`` must be importable)."""
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_worker, args=(world, _free_port(), fn, results), nprocs=world, join=True)
        return dict(results)
