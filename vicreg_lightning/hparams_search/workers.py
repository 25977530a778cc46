"""Parallel trials on one machine: ``vicreg-search --workers K [override ...]`` (the same as
``python train.py -m hparams_search=vicreg_optuna hydra.sweeper.workers=K ...``).

K worker processes share the study's storage, one per GPU (``CUDA_VISIBLE_DEVICES``) or, without
GPUs, K processes sharing the CPU cores. Each runs the same search with its own sampler seed, its
trials in its own process one after the other: it takes the next trial as soon as its last one
has ended or been pruned, whatever the other workers do. The workers are forked from the command
once its checks have passed, so they start without importing anything again.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable

from vicreg_lightning.errors import ConfigError


def available_devices() -> tuple[int, str]:
    """How many workers this machine can give a device each: its GPUs, or else its CPU cores.
    (CUDA is not initialised here: the workers, forked later, each pick their own GPU.)"""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.device_count(), "GPUs"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores, "CPU cores"


def check_workers(workers: int, launcher: str | None = "basic") -> None:
    """Refuse more workers than devices (or fewer than 1), or workers with another launcher than
    Hydra's in-process one (they run their trials on this machine)."""
    if launcher not in (None, "basic"):
        raise ConfigError(f"hydra.sweeper.workers={workers} runs trials on this machine, not through "
                          f"hydra/launcher={launcher}; drop one of them (with a launcher: hydra.sweeper.n_jobs)")
    devices, kind = available_devices()
    if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= devices:
        raise ConfigError(f"hydra.sweeper.workers={workers}: this machine has {devices} {kind}; "
                          f"choose 1 to {devices} workers")


def _worker(index: int, workers: int, work: Callable[[int], None]) -> None:
    devices, kind = available_devices()
    if kind == "GPUs":
        os.environ["CUDA_VISIBLE_DEVICES"] = str(index)
    else:  # a share of the cores: more threads than cores make torch's thread pools fight
        import torch

        threads = max(1, devices // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)
    work(index)


def run_workers(workers: int, work: Callable[[int], None]) -> list[int]:
    """``work(index)`` in ``workers`` forked processes; their exit codes (negative: killed by
    that signal), once all have ended."""
    # Imported once here, before forking: otherwise every worker would import the training stack
    # (Lightning, torchvision, the data sets) again at its first trial, all at the same time.
    import vicreg_lightning.train  # noqa: F401

    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_worker, args=(index, workers, work), name=f"search-worker-{index}")
             for index in range(workers)]
    for proc in procs:
        proc.start()
    try:
        for proc in procs:
            proc.join()
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
                proc.join()
    return [proc.exitcode for proc in procs]


if __name__ == "__main__":  # python -m vicreg_lightning.hparams_search.workers: the vicreg-search command
    from vicreg_lightning.cli import search

    search()
