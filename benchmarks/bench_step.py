"""Training-step samples/s of our LightningModule under a real Trainer, against a bare PyTorch loop.

    python benchmarks/bench_step.py [--backbone resnet18] [--size 32] [--batch 256] [--steps 12]
    python benchmarks/bench_step.py --device cuda --backbone resnet50 --size 224 --expander 8192-8192-8192
    python benchmarks/bench_step.py --micro-batch-size 64 [--backbone timm:vit_tiny_patch16_224 ...]

The bare loop runs the same backbone, expander, loss, optimiser (LARS) and LR schedule on the same
batch of two views, with no Lightning and no probe: the ratio bare time / our time is the
framework's overhead (above 0.95: less than 5%). Both see one batch, already on the device, so the
data pipeline is not measured (benchmarks/bench_data.py is).

Pairing: one bare step runs right after each of our steps, in the same process (from a callback,
outside our step's timing), so that a slow stretch of the machine hits both alike. A CPU step here
varies by ±15% from one step to the next; timing the two loops one after the other cannot see a
5% overhead through that, paired steps can. The headline is the ratio of the summed times (the
samples/s ratio over all pairs); the median per-pair ratio beside it is a check. Our step is timed from one
batch's start to the next one's, less the bare step in between, so Lightning's work between
batches counts against us.

On a GPU the table adds our step with bf16 autocast, channels_last and torch.compile (each against
its own paired fp32 bare steps), the peak memory of each, and the share of the step spent outside
the backbone's forward+backward.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import statistics
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from vicreg_lightning.backbones import uses_small_stem  # noqa: E402
from vicreg_lightning.config import preset  # noqa: E402
from vicreg_lightning.module import VICRegModule  # noqa: E402
from vicreg_lightning.optim import build_optimizer  # noqa: E402
from vicreg_lightning.micro_batch import check_micro_batch_size  # noqa: E402
from benchmarks.resident_memory import peak_growth  # noqa: E402

# The shipped LARS preset and loss (official coefficients), with no warmup: every timed step at full lr.
OPTIM = preset("optim", "lars", "warmup_epochs=0")
OPTIMIZER = {key: value for key, value in OPTIM.items() if key != "clip_grad_norm"}  # build_optimizer's
LOSS = preset("loss", "vicreg")


def model_config(args: argparse.Namespace, **speed: Any) -> dict[str, Any]:
    return {**preset("model", "digits"), "backbone": args.backbone, "small_stem": uses_small_stem(None, args.size),
            "expander": args.expander, "channels_last": False, "views_forward": "separate", **speed}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def two_views(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device) for _ in range(2))


class BareLoop:
    """Plain PyTorch, fp32: forward both views, VICReg loss, backward, LARS, schedule."""

    def __init__(self, args: argparse.Namespace, device: torch.device, total_steps: int) -> None:
        torch.manual_seed(0)
        module = VICRegModule(model_config(args), LOSS, OPTIM, num_classes=10, batch_size=args.batch,
                              image_size=args.size)
        self.backbone, self.expander = module.backbone.to(device), module.expander.to(device)
        self.criterion, self.device = module.criterion, device
        self.optimizer, self.schedule = build_optimizer(
            nn.ModuleList([self.backbone, self.expander]), nn.Identity(), global_batch_size=args.batch,
            total_steps=total_steps, steps_per_epoch=total_steps, **OPTIMIZER)
        self.x_a, self.x_b = two_views(args, device)

    def step(self) -> float:
        """Runs one step; returns its wall time in seconds."""
        sync(self.device)
        start = time.perf_counter()
        z_a, z_b = self.expander(self.backbone(self.x_a)), self.expander(self.backbone(self.x_b))
        loss = self.criterion(z_a, z_b).loss
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        # Freed here rather than before the next backward: between its steps the bare loop then
        # holds only what resident_bytes counts, and our step's peak memory can be told apart.
        self.optimizer.zero_grad(set_to_none=True)
        sync(self.device)
        return time.perf_counter() - start

    def resident_bytes(self) -> int:
        """Device memory the bare loop holds between its steps: weights, momentum, its batch."""
        tensors = [*self.backbone.state_dict().values(), *self.expander.state_dict().values(), self.x_a, self.x_b]
        tensors += [t for state in self.optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
        return sum(t.numel() * t.element_size() for t in tensors)


class SameBatch(torch.utils.data.Dataset):
    """One ready batch, ``steps`` times."""

    def __init__(self, batch: Any, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> Any:
        return self.batch


@dataclass
class Paired:
    """Step times of ours and of the bare step run right after each, and the peak memory (GiB) of
    our steps less what the bare loop holds between its steps (CUDA only)."""

    ours: list[float] = field(default_factory=list)
    bare: list[float] = field(default_factory=list)
    peak_gib: float = float("nan")

    def ratios(self) -> list[float]:
        """bare / ours per pair: above 1 where ours was the faster."""
        return [b / o for b, o in zip(self.bare, self.ours)]


def paired_run(args: argparse.Namespace, device: torch.device, warmup: int, precision: str = "32-true",
               **speed: Any) -> Paired:
    """``args.steps`` pairs after ``warmup`` of our steps: VICRegModule.training_step under
    lightning.pytorch.Trainer (probe, metrics and logging included), each followed by a bare step."""
    import lightning.pytorch as pl

    batches = warmup + args.steps + 1  # the last batch only closes the last timed interval
    bare = BareLoop(args, device, batches)
    result = Paired()

    class _Pairing(pl.Callback):
        start: float | None = None
        bare_time = 0.0

        def on_train_batch_start(self, trainer: pl.Trainer, *_: Any) -> None:
            sync(device)
            now = time.perf_counter()
            if self.start is not None and trainer.global_step > warmup:
                result.ours.append(now - self.start - self.bare_time)
                result.bare.append(self.bare_time)
            self.start = now
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()

        def on_train_batch_end(self, trainer: pl.Trainer, *_: Any) -> None:
            if device.type == "cuda" and trainer.global_step > warmup:
                ours_peak = (torch.cuda.max_memory_allocated() - bare.resident_bytes()) / 2**30
                result.peak_gib = ours_peak if result.peak_gib != result.peak_gib else max(result.peak_gib, ours_peak)
            with torch.enable_grad(), torch.autocast(device.type, enabled=False):
                self.bare_time = bare.step()

    torch.manual_seed(0)
    module = VICRegModule(model_config(args, **speed), LOSS, OPTIM, num_classes=10, batch_size=args.batch,
                          image_size=args.size)
    x_a, x_b = two_views(args, torch.device("cpu"))
    labels = torch.randint(0, 10, (args.batch,))
    loader = torch.utils.data.DataLoader(SameBatch(((x_a, x_b), labels), batches), batch_size=None)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, precision=precision, max_steps=batches, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[_Pairing()], log_every_n_steps=50, num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    return result


def backbone_share(args: argparse.Namespace, device: torch.device, steps: int, precision: str) -> float:
    """Median time of the backbone's forward+backward on both views alone (what the step cannot avoid)."""
    torch.manual_seed(0)
    module = VICRegModule(model_config(args, channels_last=device.type == "cuda"), LOSS, OPTIM, 10, args.batch,
                          image_size=args.size)
    backbone = module.backbone.to(device)
    x_a, x_b = (module._memory_format(x) for x in two_views(args, device))
    times = []
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        with autocast:
            out = backbone(x_a).float().sum() + backbone(x_b).float().sum()
        out.backward()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def _micro_batch_child(args: argparse.Namespace, micro_batch_size: int | None, queue: Any) -> None:
    """One configuration in a fresh process: ``args.steps`` timed steps after one warm-up step;
    puts (step seconds, peak bytes over the memory held before the steps)."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    module = VICRegModule(model_config(args), LOSS, OPTIM, num_classes=10, batch_size=args.batch,
                          image_size=args.size, micro_batch_size=micro_batch_size).to(device)
    optimizer, _ = build_optimizer(
        nn.ModuleList([module.backbone, module.expander]), module.probe, global_batch_size=args.batch,
        total_steps=args.steps + 1, steps_per_epoch=args.steps + 1, **OPTIMIZER)
    views = two_views(args, device)
    labels = torch.randint(0, 10, (args.batch,), device=device)

    def step() -> None:
        loss, _ = module.step_loss(views, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync(device)

    step()  # warm-up: the optimiser's state exists from here on, in both configurations
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    times = []
    with peak_growth() if device.type == "cpu" else contextlib.nullcontext([0]) as resident:
        for _ in range(args.steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    grown = resident[0] if device.type == "cpu" else torch.cuda.max_memory_allocated() - base
    queue.put((statistics.median(times), grown))


def micro_batch_table(args: argparse.Namespace) -> None:
    """One pass against micro-batches of ``args.micro_batch_size``, alternating fresh processes."""
    check_micro_batch_size(args.micro_batch_size, args.batch)
    # Fork (CPU, where the parent has run no torch kernel yet) starts a child in a moment; CUDA
    # cannot be forked into.
    fork = args.device == "cpu" and "fork" in multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if fork else "spawn")
    results: dict[int | None, list[tuple[float, int]]] = {None: [], args.micro_batch_size: []}
    for _ in range(args.rounds):
        for micro in results:
            queue = context.Queue()
            child = context.Process(target=_micro_batch_child, args=(args, micro, queue))
            child.start()
            results[micro].append(queue.get())
            child.join()
    name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"{args.backbone}, {args.size} px, batch {args.batch} (two views), expander {args.expander}; "
          f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads; {args.steps} steps x {args.rounds} "
          "fresh processes per row")
    print("| step | median s/step | × one pass | peak MiB over weights and batch | × one pass |\n|---|---:|---:|---:|---:|")
    one_time = statistics.median(t for t, _ in results[None])
    one_peak = max(p for _, p in results[None])
    for micro, measured in results.items():
        label = "one pass" if micro is None else f"micro-batches of {micro}"
        time_s, peak = statistics.median(t for t, _ in measured), max(p for _, p in measured)
        print(f"| {label} | {time_s:.3f} | **{time_s / one_time:.2f}** | {peak / 2**20:.0f} | **{peak / one_peak:.2f}** |")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--expander", default="2048-2048-2048")
    parser.add_argument("--steps", type=int, default=12, help="timed pairs per row, after the warm-up steps")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--micro-batch-size", type=int, default=None,
                        help="compare micro-batches of this many samples with one pass (time, peak memory)")
    parser.add_argument("--rounds", type=int, default=2, help="--micro-batch-size: fresh processes per configuration")
    return parser


def main() -> None:
    args = parser().parse_args()
    if args.micro_batch_size is not None:
        micro_batch_table(args)
        return
    device = torch.device(args.device)

    rows = [("ours: Lightning, probe, metrics (fp32)", paired_run(args, device, warmup=1))]
    if device.type == "cuda":
        for label, precision, speed in (
            ("ours, bf16", "bf16-mixed", {}),
            ("ours, bf16 + channels_last", "bf16-mixed", {"channels_last": True}),
            ("ours, bf16 + channels_last + compile", "bf16-mixed", {"channels_last": True, "compile": True}),
        ):
            rows.append((label, paired_run(args, device, 3, precision, **speed)))  # compile warms up longer

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{args.backbone}, {args.size} px, batch {args.batch} (two views), expander {args.expander}; "
          f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads; {args.steps} pairs per row")
    print("| step | samples/s | median ms | range ms | paired bare samples/s | × bare (all pairs) "
          "| × bare (median pair) | pair ratios | peak GiB |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, run in rows:
        ratios = run.ratios()
        memory = "–" if run.peak_gib != run.peak_gib else f"{run.peak_gib:.2f}"  # NaN: no CUDA allocator
        print(f"| {label} | {args.batch * len(run.ours) / sum(run.ours):.1f} | {statistics.median(run.ours) * 1e3:.0f} "
              f"| {min(run.ours) * 1e3:.0f}–{max(run.ours) * 1e3:.0f} | {args.batch * len(run.bare) / sum(run.bare):.1f} "
              f"| **{sum(run.bare) / sum(run.ours):.3f}** | {statistics.median(ratios):.3f} "
              f"| {min(ratios):.3f}–{max(ratios):.3f} | {memory} |")
    if device.type == "cuda":
        best_label, best = min(rows[1:], key=lambda row: statistics.median(row[1].ours))
        inside = backbone_share(args, device, args.steps + 1, "bf16-mixed")
        print(f"\nbackbone forward+backward alone (bf16, channels_last): {inside * 1e3:.0f} ms; outside it in "
              f"the fastest step ({best_label}): {100 * (1 - inside / statistics.median(best.ours)):.1f}% of step time")


if __name__ == "__main__":
    main()
