"""Checks benchmark command lines without running them: each names a script of this folder and
its arguments, which that script's own parser must accept (``GPU_SUITE_DRY=1 benchmarks/gpu_suite.sh``).

    python benchmarks/parse_commands.py "benchmarks/bench_step.py --device cuda" ...
"""

from __future__ import annotations

import importlib.util
import shlex
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def check(command: str) -> str:
    """Parses ``command`` with its script's ``parser()``; an error (exit 2) names the command."""
    script, *argv = shlex.split(command)
    path = HERE / Path(script).name
    if Path(script).parent.name != HERE.name or not path.is_file():
        raise SystemExit(f"{command!r}: not a script of {HERE}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = sys.modules[path.stem] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(module)
    module.parser().parse_args(argv)  # exits 2 with argparse's message on a bad argument
    return f"ok: python {command}"


def main() -> None:
    for command in sys.argv[1:]:
        print(check(command))


if __name__ == "__main__":
    main()
