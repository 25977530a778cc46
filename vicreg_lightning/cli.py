"""The console scripts (pyproject's ``[project.scripts]``): each parses its command line and calls
the library; bad input ends with one line on stderr and exit code 2 (:mod:`vicreg_lightning.error_exit`).

The root ``train.py`` and ``eval.py``, and ``python -m vicreg_lightning.export`` (``.report``,
``.sweep_summary``, ``.hparams_search.workers``) call the same functions. No library module imports
this one. It imports no torch, torchvision or Lightning at import time, so a bad command line fails
in seconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

from vicreg_lightning.error_exit import exit_on_user_error, sweep_job, user_errors_exit


def quiet_lightning_console() -> None:
    """Lightning attaches a stderr handler of its own to its loggers; under Hydra the job's
    handlers (console and ``<run dir>/<task>.log``) already receive those records, so each
    message would be printed twice. Call after Lightning is imported.

    Also silences what a user cannot act on: a deprecation warning that Lightning's own code raises
    under recent torch (``_pytree``'s ``LeafSpec``), and its hint to use srun on a machine that has it."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
    # Where SLURM's client is installed (a login node), every run outside a job is told to use srun;
    # a run inside one whose tasks do not match its devices is refused (vicreg_lightning/slurm.py).
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")


# The configs ship inside the package (vicreg_lightning/conf); --config-dir adds a user's own.


def _train_job(cfg: Any) -> float | None:
    with user_errors_exit(cfg):
        # Config and data are checked before torchvision and Lightning load: bad input fails fast.
        from hydra.core.hydra_config import HydraConfig

        from vicreg_lightning.config import check_config, check_recipe
        from vicreg_lightning.data.catalog import inspect_data

        check_recipe(HydraConfig.get().runtime.choices)
        inspect_data(check_config(cfg).data)
        from vicreg_lightning.train import run

        quiet_lightning_console()
        # The config as composed: the run checks it again, and records it as given.
        metrics = run(cfg)
    _stop_sweep_if_owed()
    return metrics.get(cfg.optimized_metric)


def _stop_sweep_if_owed() -> None:
    """A grid sweep ends with the preempted exit code after a job that finished holding a SIGTERM
    (the search records its trial first, then stops: vicreg_lightning/hparams_search/search.py)."""
    from vicreg_lightning.callbacks.preemption import end_if_stop_owed

    job = sweep_job()
    if job is not None and "vicreg_lightning_sweepers" not in str(job.sweeper.get("_target_")):
        end_if_stop_owed(f"job {job.job.num} finished; its results are saved")


def _eval_job(cfg: Any) -> None:
    with user_errors_exit(cfg):
        from vicreg_lightning.evaluate import run

        quiet_lightning_console()
        run(cfg)


def train() -> Any:
    """``vicreg-train [group=option ...] [key=value ...]``: pretrain with VICReg."""
    import hydra

    return exit_on_user_error(hydra.main(version_base="1.3", config_path="conf", config_name="train")(_train_job))


def evaluate() -> Any:
    """``vicreg-eval weights=<checkpoint | run dir | export dir> [eval=...]``: evaluate weights."""
    import hydra

    return exit_on_user_error(hydra.main(version_base="1.3", config_path="conf", config_name="eval")(_eval_job))


def shard(argv: list[str] | None = None) -> int:
    """``vicreg-shard <image folder> <out dir> [--option value ...]``: an image folder as a LitData
    shard set for ``data=shards`` (:mod:`vicreg_lightning.data.shard_writer`)."""
    import argparse

    from omegaconf import OmegaConf

    from vicreg_lightning.data.shard_writer import shard_defaults

    parser = argparse.ArgumentParser(prog="vicreg-shard", description="Write an image folder as a LitData shard set "
                                     "for data=shards (train and val splits, manifest.json).")
    parser.add_argument("source", help="the image folder: data.root of data=imagefolder or data=imagenet")
    parser.add_argument("out", help="a new or empty folder for the shard set")
    parser.add_argument("--data", choices=("imagefolder", "imagenet"), help="its layout (default: %(default)s)")
    parser.add_argument("--seed", type=int, help="the seed of the stored order (default: %(default)s)")
    parser.add_argument("--chunk-bytes", help="LitData chunk size (default: %(default)s)")
    parser.add_argument("--read-threads", type=int, help="files read ahead (default: %(default)s)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a data.<key> of the preset: train_dir, val_dir, val_fraction, split_seed, bad_images")
    parser.set_defaults(**shard_defaults())
    args = parser.parse_args(argv)
    with user_errors_exit():
        from vicreg_lightning.config import check_sections, preset
        from vicreg_lightning.data.shard_writer import write_shards

        (data,) = check_sections(data=OmegaConf.create(preset("data", args.data, f"root={args.source}", *args.set)))
        manifest = write_shards(data, Path(args.out), args.seed, args.chunk_bytes, args.read_threads)
    counts = ", ".join(f"{split} {info['count']}" for split, info in manifest["splits"].items())
    print(f"wrote {counts} images of {len(manifest['classes'])} classes to {args.out}; "
          f"train on them with data=shards data.input_dir={args.out}")
    return 0


def export(argv: list[str] | None = None) -> int:
    """``vicreg-export <weights> <out dir>``: backbone.pt, expander.pt and vicreg.json of pretrained
    weights (:func:`vicreg_lightning.export.export`)."""
    parser = argparse.ArgumentParser(
        prog="python -m vicreg_lightning.export" if sys.argv[0].endswith("export.py") else None,
        description="Write backbone.pt, expander.pt and vicreg.json of pretrained VICReg weights.",
    )
    parser.add_argument("weights", help="a training checkpoint (.ckpt), a run directory or an export folder")
    parser.add_argument("out_dir", help="the export folder to create")
    args = parser.parse_args(argv)
    with user_errors_exit():
        from vicreg_lightning.export import BACKBONE_FILE, EXPANDER_FILE, SIDECAR_FILE, export as write_export

        out_dir = write_export(args.weights, args.out_dir)
        info = json.loads((out_dir / SIDECAR_FILE).read_text())
    stem = ", 3x3 stem" if info["small_stem"] else ""
    print(f"Exported {info['arch']}{stem} ({info['feature_dim']}-d features) to {out_dir}: "
          f"{BACKBONE_FILE}, {EXPANDER_FILE}, {SIDECAR_FILE}")
    return 0


def report(argv: list[str] | None = None) -> int:
    """``vicreg-report <checkpoint | run dir | export dir> [--option value ...]``: the representation
    report (:func:`vicreg_lightning.report.write_report`; its options and their defaults:
    ``conf/report.yaml``)."""
    from vicreg_lightning.report.config import MAP_METHODS, report_defaults

    # Under `python -m`, argparse would name the program after the package's __main__.py.
    prog = "python -m vicreg_lightning.report" if sys.argv[0].endswith("__main__.py") else None
    parser = argparse.ArgumentParser(prog=prog, description="Representation report of a pretrained encoder.")
    parser.add_argument("source", type=Path, help="a checkpoint (<run dir>/checkpoints/*.ckpt), a run directory, "
                        "or an export folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <run dir>/report)")
    parser.add_argument("--data", default=None, help="evaluate on this data set (data.name; default: the run's)")
    parser.add_argument("--data-root", default=None, help="its data.root (default: the run's)")
    # The options of conf/report.yaml (its comments say what each does), defaults from there.
    parser.add_argument("--domain", dest="domain_name", help="a second data set, one more group in the stability section")
    parser.add_argument("--domain-root", help="its data.root (default: that of --data)")
    parser.add_argument("--device", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:1, ... (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, help="images per forward pass (default: %(default)s)")
    parser.add_argument("--num-workers", type=int, help="loader workers (default: the run's)")
    parser.add_argument("--max-samples", type=int, help="images per split, at most (default: %(default)s)")
    parser.add_argument("--invariance-samples", type=int, help="validation images for invariance (default: %(default)s)")
    parser.add_argument("--map", dest="map_method", choices=MAP_METHODS, help="(default: %(default)s)")
    parser.add_argument("--threshold-bound", type=float,
                        help="flag a worst/best group ratio of false-match or false-positive rates above this "
                        "(and above chance) (default: %(default)s)")
    parser.add_argument("--groups-csv", help="a CSV of 'path,group' rows: the groups of the threshold audit and "
                        "the stability section (default: the classes)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the untrained encoder's invariance")
    parser.add_argument("--seed", type=int, help="(default: %(default)s)")
    parser.set_defaults(**report_defaults())
    args = vars(parser.parse_args(argv))
    source, out, data_name, data_root = (args.pop(key) for key in ("source", "out", "data", "data_root"))
    with user_errors_exit():
        from vicreg_lightning.report.config import report_options
        from vicreg_lightning.report.write import FIGURES, write_report
        from vicreg_lightning.report.source import default_out, load_for_report

        options = report_options(**args)
        encoder = load_for_report(source, data_name, data_root)
        out = out or default_out(encoder)
        numbers = write_report(encoder, out, options)
    print(f"wrote {out / 'report.md'}, report.html, report.json and {len(FIGURES)} figures "
          f"({numbers['seconds']:.0f} s)")
    return 0


def sweep_summary(argv: list[str] | None = None) -> int:
    """``vicreg-sweep-summary <multirun dir> [--out DIR]``: the jobs of a ``-m`` sweep ranked, and a
    plot of the objective against each swept key (:mod:`vicreg_lightning.sweep_summary`)."""
    parser = argparse.ArgumentParser(description="Summarise a Hydra multirun (-m) sweep of train.py.")
    parser.add_argument("sweep_dir", type=Path, help="a multirun directory (outputs/<task>/multiruns/<time>)")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: the sweep directory)")
    args = parser.parse_args(argv)
    out = args.out or args.sweep_dir
    with user_errors_exit():
        from vicreg_lightning.sweep_summary import read_sweep, write_summary

        paths = write_summary(read_sweep(args.sweep_dir), out)
    print(out.joinpath("summary.md").read_text())
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def search(argv: list[str] | None = None) -> None:
    """``vicreg-search [--workers K] [override ...]``: a hyper-parameter search with K parallel
    trials on this machine (:mod:`vicreg_lightning.hparams_search.workers`)."""
    parser = argparse.ArgumentParser(description="Parallel trials of a hyper-parameter search on one machine.",
                                     usage="vicreg-search [--workers K] [override ...]")
    parser.add_argument("--workers", type=int, default=None, help="parallel trials (default: one per GPU, else 1)")
    args, overrides = parser.parse_known_args(argv)
    workers = args.workers
    if workers is None:
        from vicreg_lightning.hparams_search.workers import available_devices

        devices, kind = available_devices()
        workers = devices if kind == "GPUs" else 1
    sys.argv = [sys.argv[0], "-m", "hparams_search=vicreg_optuna", f"hydra.sweeper.workers={workers}", *overrides]
    train()
