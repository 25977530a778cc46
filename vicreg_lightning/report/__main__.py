"""``python -m vicreg_lightning.report`` and the ``vicreg-report`` console script: the command line
of :func:`~vicreg_lightning.report.sections.write_report` (its options, one line on bad input)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import vicreg_lightning.report as package
from vicreg_lightning.cli import user_errors_exit
from vicreg_lightning.report.config import MAP_METHODS, report_defaults, report_options
from vicreg_lightning.report.sections import FIGURES, write_report
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
    with user_errors_exit():  # bad input: one line on stderr, exit code 2
        options = report_options(**args)
        encoder = load_for_report(source, data_name, data_root)
        out = out or default_out(encoder)
        numbers = write_report(encoder, out, options)
    print(f"wrote {out / 'report.md'}, report.html, report.json and {len(FIGURES)} figures "
          f"({numbers['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
