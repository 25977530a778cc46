"""The benchmark scripts run and print their ratio tables (on tiny settings: a smoke test, not a
timing; the figures in docs/performance.md come from full runs)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests import warm
from tests.runs import ROOT
def run_benchmark(script: str, *args: str) -> str:
    proc = warm.run([sys.executable, str(ROOT / "benchmarks" / script), *args], timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def table_rows(output: str) -> dict[str, list[str]]:
    """``{first cell: other cells}`` of the Markdown table rows, header and rule left out."""
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in output.splitlines() if line.startswith("| ")]
    return {row[0]: row[1:] for row in rows[1:]}


def test_bench_step_pairs_every_timed_step_with_a_bare_step():
    output = run_benchmark("bench_step.py", "--backbone", "resnet10", "--batch", "8", "--size", "16", "--expander", "64-64",
                           "--steps", "3")
    assert "3 pairs per row" in output
    (cells,) = table_rows(output).values()
    samples_per_s, bare_samples_per_s = float(cells[0]), float(cells[3])
    ratio = float(cells[4].strip("*"))
    # The headline is the samples/s ratio: bare time / our time = our samples/s / bare samples/s.
    assert ratio == pytest.approx(samples_per_s / bare_samples_per_s, rel=0.02)
    low, high = (float(x) for x in re.split("–", cells[6]))
    assert 0 < low <= float(cells[5]) <= high


def test_bench_step_compares_micro_batches_with_one_pass():
    output = run_benchmark("bench_step.py", "--backbone", "resnet10", "--batch", "8", "--size", "16", "--expander", "64-64",
                           "--steps", "2", "--micro-batch-size", "2", "--rounds", "1")
    rows = table_rows(output)
    assert list(rows) == ["one pass", "micro-batches of 2"]
    assert rows["one pass"][1] == "**1.00**" and rows["one pass"][3] == "**1.00**"
    seconds, ratio = float(rows["micro-batches of 2"][0]), float(rows["micro-batches of 2"][1].strip("*"))
    assert ratio == pytest.approx(seconds / float(rows["one pass"][0]), rel=0.05)


def test_the_gpu_suite_dry_run_parses_every_command_it_would_run():
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh")], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "GPU_SUITE_DRY": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    checked = [line for line in proc.stdout.splitlines() if line.startswith("ok: python benchmarks/")]
    assert len(checked) == 6 and any("--micro-batch-size 64" in line for line in checked)
    # The check can fail: an argument a script does not take is refused, naming it.
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from parse_commands import check
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    with pytest.raises(SystemExit) as refused:
        check("benchmarks/bench_loss.py --shapes 256by8192")
    assert refused.value.code == 2


def test_bench_data_compares_our_pipeline_with_the_official_one():
    output = run_benchmark("bench_data.py", "--images", "4", "--repeats", "1", "--size", "32")
    rows = table_rows(output)
    assert float(rows["official (Pillow, torchvision v1)"][1]) == 1.0
    assert float(rows["ours (OpenCV, uint8 out)"][0]) > 0
    # The same images read from vicreg-shard's shards, against the folder of files.
    assert float(rows["folder of image files"][1]) == 1.0
    assert float(rows["local shards, indexed"][0]) > 0 and float(rows["local shards, stream"][0]) > 0


def test_bench_search_measures_one_worker_and_two_on_the_same_search():
    """The same search timed on 1 worker and on 2 (a failed search ends the benchmark, non-zero); the
    figure in docs/sweeps.md comes from a full run of it, not from this one."""
    output = run_benchmark("bench_search.py", "--trials", "2", "--workers", "2")
    rows = table_rows(output)
    assert list(rows) == ["1", "2"]
    assert rows["1"][1] == "**1.00**"
    one, two = float(rows["1"][0]), float(rows["2"][0])
    assert one > 0 and two > 0
    assert float(rows["2"][1].strip("*")) == pytest.approx(two / one, abs=0.01)
