"""Shared fixtures. Tests run on CPU with no network; GPU-only tests skip without a GPU."""

import os

import torch

from tests.fake_data import skip_integrity_checks  # noqa: F401  (a fixture)


def pytest_configure(config):
    # Under pytest-xdist, each worker and every process its tests start (train.py, DDP ranks)
    # gets its share of the cores: more threads than cores makes torch's thread pools spin
    # against each other.
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = str(max(1, cores // workers))
        os.environ["OMP_NUM_THREADS"] = threads
        torch.set_num_threads(int(threads))
