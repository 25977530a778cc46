"""Wall time of one search with 1 worker against K workers (``vicreg-search --workers K``).

    python benchmarks/bench_search.py [--trials 6] [--workers 2] [--rounds 1] [override ...]

Each round runs the same search (the smoke preset, one-step epochs: trials of seconds) once per
worker count, in alternating order, each in a fresh sweep directory, from the command's start to
its end (start-up included, as a user waits for it). The table prints the median seconds and the
ratio to 1 worker (below 1: faster). On CPU the workers share the cores: the ratio is what a
machine with K idle cores gives, and nearer 1 on a loaded one.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["experiment=smoke", "trainer.limit_train_batches=1", "trainer.limit_val_batches=2", "trainer.max_epochs=2",
         "callbacks.representation_health.num_samples=64"]


def search_seconds(workers: int, trials: int, overrides: list[str], folder: Path) -> float:
    command = [sys.executable, "-m", "vicreg_lightning.hparams_search.workers", "--workers", str(workers),
               *SMOKE, f"hydra.sweeper.n_trials={trials}", *overrides, f"hydra.sweep.dir={folder}"]
    start = time.monotonic()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.monotonic() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    args, overrides = parser.parse_known_args()
    counts = (1, args.workers)
    times: dict[int, list[float]] = {k: [] for k in counts}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for k in counts if round_ % 2 == 0 else counts[::-1]:
                times[k].append(search_seconds(k, args.trials, overrides, Path(tmp) / f"r{round_}_w{k}"))
    base = statistics.median(times[1])
    print(f"{args.trials} trials, smoke preset, {args.rounds} round(s) side by side\n")
    print("| workers | seconds (median) | ratio to 1 worker |\n|---|---|---|")
    for k in counts:
        print(f"| {k} | {statistics.median(times[k]):.1f} | **{statistics.median(times[k]) / base:.2f}** |")


if __name__ == "__main__":
    main()
