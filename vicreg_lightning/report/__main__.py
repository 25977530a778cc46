"""``python -m vicreg_lightning.report`` and the ``vicreg-report`` console script: the command line
of :func:`~vicreg_lightning.report.sections.write_report` (its options, one line on bad input)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import vicreg_lightning.report as package
from vicreg_lightning.cli import user_errors_exit
from vicreg_lightning.report.sections import FIGURES, ReportOptions, write_report
from vicreg_lightning.report.source import default_out, load_for_report


def main(argv: list[str] | None = None) -> int:
    # Under `python -m`, argparse would name the program after this file.
    prog = "python -m vicreg_lightning.report" if sys.argv[0].endswith("__main__.py") else None
    parser = argparse.ArgumentParser(prog=prog, description=package.__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="a checkpoint (<run dir>/checkpoints/*.ckpt), a run directory, "
                        "or an export folder")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: <run dir>/report)")
    parser.add_argument("--data", default=None, help="evaluate on this data set (data.name; default: the run's)")
    parser.add_argument("--data-root", default=None, help="its data.root (default: the run's)")
    parser.add_argument("--domain", default=None, help="a second data set, one more group in the stability section")
    parser.add_argument("--domain-root", default=None, help="its data.root (default: that of --data)")
    parser.add_argument("--device", default="auto", help="auto (CUDA, MPS, else CPU), cpu, cuda, cuda:1, ...")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--num-workers", type=int, default=None, help="loader workers (default: the run's)")
    parser.add_argument("--max-samples", type=int, default=10000, help="images per split, at most (seeded draw)")
    parser.add_argument("--invariance-samples", type=int, default=512, help="validation images for invariance")
    parser.add_argument("--map", dest="map_method", choices=("auto", "tsne", "pca"), default="auto")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the untrained encoder's invariance")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name in ("batch_size", "max_samples", "invariance_samples"):
        if getattr(args, name) < 2:
            parser.error(f"--{name.replace('_', '-')} must be at least 2")
    options = ReportOptions(
        domain_name=args.domain, domain_root=args.domain_root,
        device=args.device, batch_size=args.batch_size, num_workers=args.num_workers, max_samples=args.max_samples,
        invariance_samples=args.invariance_samples, map_method=args.map_method, baseline=args.baseline,
        seed=args.seed,
    )
    with user_errors_exit():  # bad input: one line on stderr, exit code 2
        encoder = load_for_report(args.source, args.data, args.data_root)
        out = args.out or default_out(encoder)
        numbers = write_report(encoder, out, options)
    print(f"wrote {out / 'report.md'}, report.html, report.json and {len(FIGURES)} figures "
          f"({numbers['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
