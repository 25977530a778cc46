"""Shared fixtures. Tests run on CPU with no network; GPU-only tests skip without a GPU."""

import json
import os
import resource
from collections import Counter
from pathlib import Path

import pytest
import torch

from tests.fake_data import skip_integrity_checks  # noqa: F401  (a fixture)
from tests.runs import DDP, DEFAULT_RUN, KNN_MONITOR, ONE_DEVICE, TINY_RUN, TINY_VIT, TWO_EPOCHS, trained_run


def pytest_addoption(parser):
    parser.addoption(
        "--cpu-report", metavar="FILE",
        help="append each test's CPU seconds to FILE (JSON lines): its worker's and those of the processes the "
             "worker reaped meanwhile; with WARM_PROCESSES=0 that is every command the test ran, SLURM jobs aside")


def _cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    report = item.config.getoption("--cpu-report")
    start = _cpu_seconds() if report else 0.0
    yield
    if report:
        with open(report, "a") as f:
            f.write(json.dumps({"test": item.nodeid, "cpu_s": round(_cpu_seconds() - start, 2)}) + "\n")


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


# The runs of minutes start first, one worker each: xdist (--dist loadgroup, taking groups in
# collection order with --no-loadscope-reorder) gives each group whole to one worker, and a long
# group taken last would leave the other worker idle for minutes.
LONG_RUNS = ("default_run", "digits_vit_run")


TIERS = ("unit", "integration", "distributed")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Each test carries its folder's tier as a marker: `-m "not distributed"` works across folders.
    for item in items:
        tier = next((part for part in item.path.parts if part in TIERS), None)
        if tier is not None:
            item.add_marker(tier)

    def order(item: pytest.Item) -> int:
        if any(name in getattr(item, "fixturenames", ()) for name in LONG_RUNS):
            return 0
        return 1 if item.get_closest_marker("xdist_group") else 2

    items.sort(key=order)  # stable: within each rank, files and tests keep their order


def pytest_terminal_summary(terminalreporter) -> None:
    # The dots of a CI log do not say whether the SLURM tests ran against the cluster or were
    # skipped for want of sbatch; this line does, naming each.
    outcomes: dict[str, str] = {}
    for outcome in ("failed", "error", "passed", "skipped"):
        for report in terminalreporter.stats.get(outcome, []):
            if "slurm" in getattr(report, "keywords", {}) and report.nodeid not in outcomes:
                outcomes[report.nodeid] = outcome
    if outcomes:
        counts = ", ".join(f"{n} {outcome}" for outcome, n in Counter(outcomes.values()).items())
        terminalreporter.write_line(f"SLURM tests (marker slurm): {counts}")
        for nodeid, outcome in outcomes.items():
            terminalreporter.write_line(f"  {outcome.upper()} {nodeid}")


@pytest.fixture(scope="session")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python train.py``: the embedded digits, ResNet-10, 20 epochs (minutes on 2 CPU cores)."""
    return trained_run(tmp_path_factory, "default", DEFAULT_RUN)


@pytest.fixture(scope="session")
def tiny_digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default run's model (ResNet-10, ImageNet stem) after 2 steps, with the k-NN monitor
    (whose val/knn_acc1 tests compare with eval.py's)."""
    return trained_run(tmp_path_factory, "tiny_digits", (*TINY_RUN, KNN_MONITOR))


@pytest.fixture(scope="session")
def tiny_ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run on 2 DDP processes (gloo): test_ddp.py compares it with one process,
    test_eval.py its k-NN monitor with the offline k-NN."""
    return trained_run(tmp_path_factory, "tiny_ddp", (*TINY_RUN, *DDP, KNN_MONITOR))


@pytest.fixture(scope="session")
def tiny_resnet18_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """ResNet-18 with the small-image (3x3, no max-pool) stem after 2 steps on digits, on 16-px crops
    (that stem costs 10x the default model per image): one validation batch, no health check."""
    return trained_run(tmp_path_factory, "tiny_resnet18", (
        *TINY_RUN, "model.backbone=resnet18", "model.small_stem=true", "trainer.limit_val_batches=1",
        "augment.size=16", "augment.val_resize=16",
        "callbacks.representation_health=null",
    ))


@pytest.fixture(scope="session")
def tiny_vit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small timm ViT after 2 steps on digits, in one process (test_ddp.py compares 2 ranks with it)."""
    return trained_run(tmp_path_factory, "tiny_vit", (*TINY_RUN, *TINY_VIT, *ONE_DEVICE))


@pytest.fixture(scope="session")
def digits_vit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python train.py experiment=digits_vit``: a ViT on the digits, 20 epochs (minutes)."""
    return trained_run(tmp_path_factory, "digits_vit", ("experiment=digits_vit", *DEFAULT_RUN))


@pytest.fixture(scope="session")
def two_epoch_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The smoke run over 2 epochs, uninterrupted: what stopped and resumed runs must end as."""
    return trained_run(tmp_path_factory, "two_epochs", tuple(TWO_EPOCHS))


@pytest.fixture(scope="session")
def two_epoch_ddp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same on 2 local DDP processes (gloo): what a 2-task SLURM job must end as."""
    return trained_run(tmp_path_factory, "two_epochs_ddp", (*TWO_EPOCHS, *DDP))
