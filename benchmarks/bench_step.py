"""Training-step samples/s of our LightningModule under a real Trainer, against a bare PyTorch loop.

    python benchmarks/bench_step.py [--backbone resnet18] [--size 32] [--batch 256] [--steps 4]
    python benchmarks/bench_step.py --device cuda --backbone resnet50 --size 224 --expander 8192-8192-8192

The bare loop runs the same backbone, expander, loss, optimiser (LARS) and LR schedule on the same
batch of two views, with no Lightning and no probe: the ratio ours / bare is the framework's
overhead (above 0.95: less than 5%). Both see one batch, already on the device, so the data
pipeline is not measured (benchmarks/bench_data.py is). The two alternate, twice, in this one
process; each row is the median step time after a warm-up step.

On a GPU the table adds our step with bf16 autocast, channels_last and torch.compile, the peak
memory of each, and the share of the step spent outside the backbone's forward+backward.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vicreg_lightning.module import VICRegModule  # noqa: E402
from vicreg_lightning.optim import build_optimizer, scaled_lr, warmup_cosine  # noqa: E402

OPTIM = {"name": "lars", "base_lr": 0.3, "weight_decay": 1e-6, "momentum": 0.9, "eta": 1e-3,
         "betas": [0.9, 0.999], "exclude_bias_and_norm": True, "warmup_epochs": 0, "end_lr_ratio": 0.001,
         "probe_lr": 0.1}
LOSS = {"sim_coeff": 25.0, "std_coeff": 25.0, "cov_coeff": 1.0}


def model_config(args: argparse.Namespace, **speed: Any) -> dict[str, Any]:
    return {"backbone": args.backbone, "small_stem": args.size <= 64, "zero_init_residual": True,
            "expander": args.expander, "channels_last": False, "compile": False, "views_forward": "separate",
            **speed}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def two_views(args: argparse.Namespace, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return tuple(torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device) for _ in range(2))


def bare_loop(args: argparse.Namespace, device: torch.device, steps: int) -> list[float]:
    """Step times of plain PyTorch: forward both views, VICReg loss, backward, LARS, schedule."""
    torch.manual_seed(0)
    module = VICRegModule(model_config(args), LOSS, OPTIM, num_classes=10, batch_size=args.batch)
    backbone, expander, criterion = module.backbone.to(device), module.expander.to(device), module.criterion
    optimizer = build_optimizer("lars", encoder=nn.ModuleList([backbone, expander]), probe=nn.Identity(),
                                lr=scaled_lr(0.3, args.batch), probe_lr=0.1, weight_decay=1e-6, momentum=0.9,
                                eta=1e-3, betas=(0.9, 0.999), exclude_bias_and_norm=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, 1000, 0, 0.001))
    x_a, x_b = two_views(args, device)
    times = []
    for _ in range(steps):
        sync(device)
        start = time.perf_counter()
        z_a, z_b = expander(backbone(x_a)), expander(backbone(x_b))
        loss = criterion(z_a, z_b).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        sync(device)
        times.append(time.perf_counter() - start)
    return times


class SameBatch(torch.utils.data.Dataset):
    """One ready batch, ``steps`` times."""

    def __init__(self, batch: Any, steps: int) -> None:
        self.batch, self.steps = batch, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> Any:
        return self.batch


class StepTimer:
    """Wall time of each training batch, from batch start to batch end (after the optimiser step)."""

    def __init__(self, device: torch.device) -> None:
        import lightning.pytorch as pl

        class _Timer(pl.Callback):
            def on_train_batch_start(inner, *a: Any) -> None:  # noqa: N805
                sync(device)
                inner.start = time.perf_counter()

            def on_train_batch_end(inner, *a: Any) -> None:  # noqa: N805
                sync(device)
                self.times.append(time.perf_counter() - inner.start)

        self.times: list[float] = []
        self.callback = _Timer()


def ours(args: argparse.Namespace, device: torch.device, steps: int, precision: str = "32-true",
         **speed: Any) -> tuple[list[float], float]:
    """Step times of VICRegModule.training_step under lightning.pytorch.Trainer (probe, metrics and
    logging included), and the peak memory in GiB (CUDA only)."""
    import lightning.pytorch as pl

    torch.manual_seed(0)
    module = VICRegModule(model_config(args, **speed), LOSS, OPTIM, num_classes=10, batch_size=args.batch)
    x_a, x_b = two_views(args, torch.device("cpu"))
    labels = torch.randint(0, 10, (args.batch,))
    loader = torch.utils.data.DataLoader(SameBatch(((x_a, x_b), labels), steps), batch_size=None)
    timer = StepTimer(device)
    trainer = pl.Trainer(
        accelerator=device.type, devices=1, precision=precision, max_steps=steps, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=[timer.callback], log_every_n_steps=50, num_sanity_val_steps=0,
    )
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, train_dataloaders=loader)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return timer.times, peak


def backbone_share(args: argparse.Namespace, device: torch.device, steps: int, precision: str) -> float:
    """Median time of the backbone's forward+backward on both views alone (what the step cannot avoid)."""
    torch.manual_seed(0)
    module = VICRegModule(model_config(args, channels_last=device.type == "cuda"), LOSS, OPTIM, 10, args.batch)
    backbone = module.backbone.to(device)
    if device.type == "cuda":
        backbone.to(memory_format=torch.channels_last)
    x_a, x_b = two_views(args, device)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--expander", default="2048-2048-2048")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per run, after one warm-up step")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    device = torch.device(args.device)
    steps = args.steps + 1

    bare: list[float] = []
    lightning: list[float] = []
    for _ in range(2):  # alternate, so that machine noise falls on both alike
        bare += bare_loop(args, device, steps)[1:]
        lightning += ours(args, device, steps)[0][1:]
    rows = [("bare PyTorch loop (fp32)", statistics.median(bare), float("nan"), bare),
            ("ours: Lightning, probe, metrics (fp32)", statistics.median(lightning), float("nan"), lightning)]
    if device.type == "cuda":
        for label, precision, speed in (
            ("ours, bf16", "bf16-mixed", {}),
            ("ours, bf16 + channels_last", "bf16-mixed", {"channels_last": True}),
            ("ours, bf16 + channels_last + compile", "bf16-mixed", {"channels_last": True, "compile": True}),
        ):
            times, peak = ours(args, device, steps + 2, precision, **speed)
            rows.append((label, statistics.median(times[3:]), peak, times[3:]))

    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"{args.backbone}, {args.size} px, batch {args.batch} (two views), expander {args.expander}; "
          f"torch {torch.__version__}, {name}, {torch.get_num_threads()} threads")
    base = rows[0][1]
    print("| step | median ms | range ms | samples/s | × bare | peak GiB |\n|---|---:|---:|---:|---:|---:|")
    for label, seconds, peak, times in rows:
        spread = f"{min(times) * 1e3:.0f}–{max(times) * 1e3:.0f}"
        memory = "–" if peak != peak else f"{peak:.2f}"  # NaN: no CUDA allocator to ask
        print(f"| {label} | {seconds * 1e3:.0f} | {spread} | {args.batch / seconds:.1f} | {base / seconds:.3f} | {memory} |")
    if device.type == "cuda":
        best = min(rows[2:], key=lambda row: row[1])
        inside = backbone_share(args, device, steps, "bf16-mixed")
        print(f"\nbackbone forward+backward alone (bf16, channels_last): {inside * 1e3:.0f} ms; "
              f"outside it in the fastest step ({best[0]}): {100 * (1 - inside / best[1]):.1f}% of step time")


if __name__ == "__main__":
    main()
