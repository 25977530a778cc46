"""Forward+backward time and peak memory of our VICRegLoss against the official D×D formulation.

    python benchmarks/bench_loss.py [--device cpu|cuda] [--repeats 3] [--shapes 256x8192 ...]

Both run side by side in this one process on the same inputs; the table prints the ratio
official / ours (above 1: ours is faster or smaller). Peak memory is the extra memory the
forward+backward takes over its inputs: CUDA's allocator peak on a GPU; on the CPU, the growth of a
fresh child process's resident set, sampled every millisecond.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vicreg_lightning.loss import VICRegLoss  # noqa: E402
from benchmarks.resident_memory import peak_growth  # noqa: E402

SHAPES = [(256, 8192), (1024, 8192), (2048, 8192), (4096, 2048)]


def official_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``facebookresearch/vicreg`` main_vicreg.py, single process: always the D×D covariance."""
    n, d = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (n - 1)
    cov_y = (y.T @ y) / (n - 1)

    def off_diagonal(m: torch.Tensor) -> torch.Tensor:
        return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()

    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(d) + off_diagonal(cov_y).pow_(2).sum().div(d)
    return 25.0 * repr_loss + 25.0 * std_loss + 1.0 * cov_loss


def ours_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return VICRegLoss()(x, y).loss


IMPLEMENTATIONS = {"official": official_loss, "ours": ours_loss}


def inputs(n: int, d: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(n, d, generator=g).to(device).requires_grad_()
    y = torch.randn(n, d, generator=g).to(device).requires_grad_()
    return x, y


def step(fn, x: torch.Tensor, y: torch.Tensor) -> None:
    x.grad = y.grad = None
    fn(x, y).backward()


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_both(n: int, d: int, device: str, repeats: int) -> dict[str, float]:
    """Median seconds per forward+backward of each implementation. The two alternate within each
    repeat, so that a slow spell of the machine hits both alike."""
    x, y = inputs(n, d, device)
    times: dict[str, list[float]] = {name: [] for name in IMPLEMENTATIONS}
    for fn in IMPLEMENTATIONS.values():
        step(fn, x, y)  # warm-up
    for _ in range(repeats):
        for name, fn in IMPLEMENTATIONS.items():
            _sync(device)
            start = time.perf_counter()
            step(fn, x, y)
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _cpu_peak_child(name: str, n: int, d: int, queue) -> None:
    """Growth of the resident set over its value before the step."""
    x, y = inputs(n, d, "cpu")
    with peak_growth() as grown:
        step(IMPLEMENTATIONS[name], x, y)
    queue.put(grown[0])


def peak_bytes(name: str, n: int, d: int, device: str) -> float:
    if device == "cuda":
        x, y = inputs(n, d, device)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(IMPLEMENTATIONS[name], x, y)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_cpu_peak_child, args=(name, n, d, queue))
    proc.start()
    value = queue.get()
    proc.join()
    return value


def _shape(text: str) -> tuple[int, int]:
    try:
        n, d = (int(v) for v in text.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NxD, e.g. 256x8192") from None
    return n, d


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", nargs="*", type=_shape, default=SHAPES)
    return parser


def main() -> None:
    args = parser().parse_args()
    shapes = args.shapes

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"VICReg loss forward+backward, float32, {device_name}, torch {torch.__version__}")
    print("| N | D | official s | ours s | speed-up | official MiB | ours MiB | memory ratio | our form |\n"
          "|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for n, d in shapes:
        seconds = time_both(n, d, args.device, args.repeats)
        t_off, t_ours = seconds["official"], seconds["ours"]
        m_off = peak_bytes("official", n, d, args.device) / 2**20
        m_ours = peak_bytes("ours", n, d, args.device) / 2**20
        form = "N×N Gram" if n < d else "D×D"
        print(f"| {n} | {d} | {t_off:.4f} | {t_ours:.4f} | **{t_off / t_ours:.1f}×** | {m_off:.0f} | {m_ours:.0f} "
              f"| {m_off / max(m_ours, 1e-9):.1f}× | {form} |")


if __name__ == "__main__":
    main()
