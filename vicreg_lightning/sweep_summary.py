"""Summarise a ``-m`` sweep: ``python -m vicreg_lightning.sweep_summary <multirun dir> [--out DIR]``.

Writes ``summary.csv`` and ``summary.md`` (one row per job: its swept values, status, objective
and main final metrics, best first in the search's direction; failed jobs with their reason,
pruned ones with the epoch and the reason they were stopped) and one PNG per swept numeric key,
``objective_vs_<key>.png``. Reads only what the jobs left in their run directories (``.hydra/``,
``metrics.json``, ``failure.json``, ``pruned.json``), so it works during a sweep, after one, and on
the sweeps of any launcher.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from vicreg_lightning.run_dir import FAILURE_FILE, METRICS_FILE, PRUNED_FILE
from vicreg_lightning.errors import UserError

# Shown next to the objective when the jobs report them.
REPORTED_METRICS = ("val/probe_acc1", "health/embed_rankme", "train/loss", "epoch")


@dataclass
class Job:
    """What one job of the sweep left behind."""

    name: str
    overrides: dict[str, str]
    objective_name: str
    status: str  # finished, pruned (stopped early by the search), failed, or incomplete (running, or killed)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str = ""
    pruned_epoch: int | None = None
    prune_reason: str = ""
    maximize: bool = True  # the search's direction (hydra.sweeper.direction); a grid sweep maximises

    @property
    def objective(self) -> float:
        return self.metrics.get(self.objective_name, math.nan)


def read_job(job_dir: Path) -> Job:
    overrides = OmegaConf.load(job_dir / ".hydra" / "overrides.yaml")
    pairs = dict(item.split("=", 1) for item in overrides if "=" in item)
    config = OmegaConf.load(job_dir / ".hydra" / "config.yaml")
    hydra_file = job_dir / ".hydra" / "hydra.yaml"
    sweeper = OmegaConf.load(hydra_file).hydra.get("sweeper", {}) if hydra_file.exists() else {}
    job = Job(job_dir.name, pairs, str(config.get("optimized_metric", "val/probe_acc1")), "incomplete",
              maximize=sweeper.get("direction", "maximize") != "minimize")
    try:
        if (job_dir / PRUNED_FILE).exists():
            pruned = json.loads((job_dir / PRUNED_FILE).read_text())
            job.status, job.metrics = "pruned", pruned["values"]
            job.pruned_epoch, job.prune_reason = pruned["epoch"], pruned["reason"]
        elif (job_dir / METRICS_FILE).exists():
            job.status, job.metrics = "finished", json.loads((job_dir / METRICS_FILE).read_text())
        elif (job_dir / FAILURE_FILE).exists():
            job.status, job.error = "failed", json.loads((job_dir / FAILURE_FILE).read_text())["error"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        # A file cut short (a disk that filled, a job killed while writing): this job is unreadable,
        # the sweep's other jobs are still summarised.
        job.status, job.metrics = "failed", {}
        job.error = f"its result files cannot be read ({type(error).__name__}: {error}); rerun the job"
    return job


def read_sweep(sweep_dir: Path) -> list[Job]:
    if not sweep_dir.is_dir():
        raise UserError(f"{str(sweep_dir)!r}: no such directory; pass a multirun directory (outputs/<task>/multiruns/...)")
    job_dirs = [d for d in sweep_dir.iterdir() if (d / ".hydra" / "overrides.yaml").exists()]
    if not job_dirs:
        raise UserError(f"{str(sweep_dir)!r} holds no jobs (no <job>/.hydra/overrides.yaml); is it a multirun directory?")
    return [read_job(d) for d in sorted(job_dirs, key=lambda d: (len(d.name), d.name))]


def swept_keys(jobs: list[Job]) -> list[str]:
    """The override keys whose values differ between jobs, in command-line order."""
    keys = dict.fromkeys(key for job in jobs for key in job.overrides)
    return [key for key in keys if len({job.overrides.get(key) for job in jobs}) > 1]


STATUS_ORDER = ("finished", "pruned", "incomplete", "failed")


def ranked(jobs: list[Job]) -> list[Job]:
    """Finished jobs first, best objective first in the search's direction; then pruned ones
    (ranked the same way), then the rest."""
    def key(job: Job) -> tuple[int, bool, float]:
        value = job.objective
        return (STATUS_ORDER.index(job.status), math.isnan(value),
                0.0 if math.isnan(value) else (-value if job.maximize else value))

    return sorted(jobs, key=key)


def best(jobs: list[Job]) -> Job | None:
    """The best finished job, None when none has finished."""
    top = ranked(jobs)[0]
    return top if top.status == "finished" and not math.isnan(top.objective) else None


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def table(jobs: list[Job]) -> tuple[list[str], list[list[Any]]]:
    keys = swept_keys(jobs)
    objective = jobs[0].objective_name
    reported = [m for m in REPORTED_METRICS if m != objective and any(m in job.metrics for job in jobs)]
    pruned = any(job.status == "pruned" for job in jobs)
    header = ["rank", "job", "status", *keys, objective, *reported, "error",
              *(("pruned_epoch", "prune_reason") if pruned else ())]
    rows = []
    for rank, job in enumerate(ranked(jobs), start=1):
        values = [job.metrics.get(m, math.nan) for m in (objective, *reported)]
        rows.append([rank, job.name, job.status, *(job.overrides.get(k, "") for k in keys), *values, job.error,
                     *((job.pruned_epoch if job.pruned_epoch is not None else "", job.prune_reason) if pruned else ())])
    return header, rows


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4g}"
    return str(value).replace("|", "\\|")


def write_summary(jobs: list[Job], out_dir: Path) -> list[Path]:
    """Write the CSV, the Markdown table and the plots; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    header, rows = table(jobs)
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    with csv_path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    counts = ", ".join(f"{sum(job.status == status for job in jobs)} {status}" for status in STATUS_ORDER)
    top = best(jobs)
    best_line = (f"Best: job {top.name}, `{top.objective_name}` = {top.objective:.4g} "
                 f"({' '.join(f'{k}={top.overrides[k]}' for k in swept_keys(jobs) if k in top.overrides)})"
                 if top else "Best: none finished yet")
    direction = "highest" if jobs[0].maximize else "lowest"
    md_path.write_text(f"# Sweep summary\n\n{len(jobs)} jobs: {counts}; ranked by `{jobs[0].objective_name}` "
                       f"({direction} first).\n\n{best_line}\n\n" + "\n".join(lines) + "\n")
    return [csv_path, md_path, *plot_objective(jobs, out_dir)]


def plot_objective(jobs: list[Job], out_dir: Path) -> list[Path]:
    """One scatter plot of the objective against each swept numeric key (log axis when the
    values span more than a decade); failed jobs are marked on the bottom edge."""
    # A Figure without pyplot: no global backend switch, so it draws the same in a notebook.
    from matplotlib.figure import Figure

    paths = []
    objective = jobs[0].objective_name
    for key in swept_keys(jobs):
        points = [(_number(job.overrides.get(key)), job) for job in jobs]
        if any(x is None for x, _ in points):
            continue  # not numeric (e.g. model=resnet18,resnet50): the table shows it
        fig = Figure(figsize=(5, 3.5))
        ax = fig.subplots()
        done = [(x, job.objective) for x, job in points if not math.isnan(job.objective)]
        failed = [x for x, job in points if math.isnan(job.objective)]
        if done:
            ax.scatter([x for x, _ in done], [y for _, y in done], color="tab:blue", label="finished")
        if failed:
            ax.scatter(failed, [0.0] * len(failed), transform=ax.get_xaxis_transform(), marker="x",
                       color="tab:red", clip_on=False, label="failed")
        xs = [x for x, _ in points]
        if min(xs) > 0 and max(xs) / min(xs) > 10:
            ax.set_xscale("log")
        ax.set_xlabel(key)
        ax.set_ylabel(objective)
        ax.set_title(f"{objective} vs {key}")
        ax.legend(loc="best", fontsize="small")
        fig.tight_layout()
        path = out_dir / f"objective_vs_{key.replace('/', '_')}.png"
        fig.savefig(path, dpi=100)
        paths.append(path)
    return paths


if __name__ == "__main__":  # python -m vicreg_lightning.sweep_summary: the vicreg-sweep-summary command
    from vicreg_lightning.cli import sweep_summary

    sys.exit(sweep_summary())
