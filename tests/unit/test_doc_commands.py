"""Every command line the docs and the README show is one the tests run or parse.

Each line of a ```bash or ```console block of ``docs/*.md`` and ``README.md`` (``$ `` lines in
console blocks, whose next line may show the error it ends with) is checked here, in this process,
without running anything:

- ``python train.py`` / ``vicreg-train`` and ``python eval.py`` / ``vicreg-eval``: the overrides are
  composed as the command composes them and the config is checked (a typo'd key, option or value
  fails here); the sweeps of ``-m`` are composed at their first value;
- the other console scripts of ``[project.scripts]`` (and their ``python -m`` forms), the examples
  and the benchmarks: their own argument parsers parse the arguments;
- ``sphinx-build``: Sphinx's own parser; ``python -m pytest``: the paths exist, the markers are
  registered;
- anything else must be on :data:`ALLOWED`, with the reason it is not parsed here.

Placeholders stand for a user's values: ``<time>``, ``<run dir>`` are read as one value (no path is
opened), ``<overrides>`` and ``...`` as more words (dropped).
"""

from __future__ import annotations

import argparse
import re
import runpy
import shlex
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
PAGES = sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCRIPTS: dict[str, str] = PYPROJECT["project"]["scripts"]  # vicreg-train -> vicreg_lightning.cli:train
# Placeholders: <overrides> and ... stand for more words (dropped); any other <...> for one value.
MORE = re.compile(r"\s(<overrides>|\.\.\.)(?=\s|$)")
VALUE = re.compile(r"<[^<>]*>")
# Values the sbatch recipes take from SLURM's environment.
SLURM_ENV = {"SLURM_NTASKS_PER_NODE": "2", "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_ID": "1"}

# Commands not parsed here, each with the reason.
ALLOWED = {
    "python3 -m venv .venv": "the README's set-up command, run as written by .ci/run",
    ". .venv/bin/activate": "the README's set-up and test commands, run as written by .ci/run",
    "pip install -e '.[dev]'": "the README's set-up command, run as written by .ci/run (the extra: test below)",
    "sudo bash scripts/slurm_cluster.sh": "run by .ci/run (as root) before the tests; the script exists: test below",
}


@dataclass(frozen=True)
class Command:
    page: str
    line: int
    text: str
    error: str | None  # the "error: ..." line a console block shows after it


def commands() -> list[Command]:
    """Every command of every ```bash/```console block, continuation lines joined, ``&&`` split."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for block in re.finditer(r"^```(bash|console)\n(.*?)^```", text, re.S | re.M):
            first_line = text[:block.start()].count("\n") + 2
            lines = block.group(2).splitlines()
            i = 0
            while i < len(lines):
                start, line = i, lines[i]
                while line.rstrip().endswith("\\") and i + 1 < len(lines):
                    i += 1
                    line = line.rstrip()[:-1] + " " + lines[i].strip()
                i += 1
                if block.group(1) == "console":
                    if not line.startswith("$ "):
                        continue  # the output of the command above
                    line = line[2:]
                shown = lines[i] if block.group(1) == "console" and i < len(lines) else ""
                for part in line.split(" && "):
                    if part.strip() and not part.lstrip().startswith("#"):
                        found.append(Command(str(page.relative_to(ROOT)), first_line + start, part.strip(),
                                             shown[len("error: "):] if shown.startswith("error: ") else None))
    return found


def words(command: str) -> list[str]:
    return shlex.split(VALUE.sub("x", MORE.sub(" ", command)), comments=True)


# --- Hydra commands ----------------------------------------------------------------------------

FLAGS_WITH_VALUE = ("--cfg", "-c", "--package", "-p", "--config-dir", "-cd", "--config-name", "-cn")


def hydra_overrides(argv: list[str]) -> list[str]:
    """The overrides of a Hydra command line, its flags dropped, each sweep at its first value."""
    overrides, skip = [], False
    for word in argv:
        if skip:
            skip = False
        elif word in FLAGS_WITH_VALUE:
            skip = True
        elif not word.startswith("-"):
            overrides.append(word)
    parsed = OverridesParser.create().parse_overrides(overrides)
    first = []
    for text, override in zip(overrides, parsed, strict=True):
        if override.is_sweep_override():
            value = override.value()
            start = getattr(value, "start", None)  # interval(a, b): a
            head = start if start is not None else next(iter(override.sweep_string_iterator()))
            text = f"{override.get_key_element()}={head}"
        first.append(text)
    return first


CHECKED: dict[tuple[str, ...], Exception | None] = {}  # the README repeats commands of the pages


def compose_checked(config: str, overrides: list[str]) -> None:
    """``conf/<config>.yaml`` composed with ``overrides`` and checked as the command checks it
    before anything loads; an error is raised as the command would meet it."""
    key = (config, *overrides)
    if key not in CHECKED:
        try:
            _compose_checked(config, overrides)
            CHECKED[key] = None
        except Exception as error:  # noqa: BLE001 - kept for the same command on another page
            CHECKED[key] = error
    if CHECKED[key] is not None:
        raise CHECKED[key]


def _compose_checked(config: str, overrides: list[str]) -> None:
    from vicreg_lightning.config import check_config, check_recipe, register_schemas

    register_schemas()
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        # paths.output_dir is the job's directory, which Hydra sets only when the job runs.
        cfg = compose(config, overrides=[*overrides, "paths.output_dir=unused"], return_hydra_config=True)
    choices = cfg.hydra.runtime.choices
    del cfg.hydra
    if config == "train":
        check_recipe(choices)
        check_config(cfg)
    else:
        from vicreg_lightning.evaluate.config import check_eval_config

        check_eval_config(cfg)


# --- argparse commands -------------------------------------------------------------------------


class Parsed(Exception):
    """Raised in place of running a command once its parser has accepted the arguments."""

    def __init__(self, namespace: argparse.Namespace, extras: list[str]):
        super().__init__()
        self.namespace, self.extras = namespace, extras


@contextmanager
def parse_only() -> Iterator[None]:
    """Every ``ArgumentParser`` of the command parses as usual (exit 2 on a bad argument) and
    then stops the command with :class:`Parsed`."""
    parse_args, parse_known_args = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args
    inside = threading.local()

    def checked_parse_args(self, args=None, namespace=None):
        inside.flag = True
        try:
            namespace = parse_args(self, args, namespace)
        finally:
            inside.flag = False
        raise Parsed(namespace, [])

    def checked_parse_known_args(self, args=None, namespace=None):
        result = parse_known_args(self, args, namespace)
        if getattr(inside, "flag", False):
            return result
        raise Parsed(*result)

    with mock.patch.object(argparse.ArgumentParser, "parse_args", checked_parse_args), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", checked_parse_known_args):
        yield


def parse_with(entry: str, argv: list[str]) -> Parsed:
    """``entry`` (``module:function`` of [project.scripts], or a script's path) run on ``argv``
    until its parser has parsed them."""
    with parse_only(), mock.patch.object(sys, "argv", [entry, *argv]):
        try:
            if entry.endswith(".py"):
                runpy.run_path(str(ROOT / entry), run_name="__main__")
            else:
                module, _, function = entry.partition(":")
                getattr(__import__(module, fromlist=[function]), function)(argv)
        except Parsed as parsed:
            return parsed
    raise AssertionError(f"{entry} {' '.join(argv)}: ran without parsing its arguments")


# --- the check of one command --------------------------------------------------------------------

MODULES = {"vicreg_lightning.export": "vicreg-export", "vicreg_lightning.report": "vicreg-report",
           "vicreg_lightning.sweep_summary": "vicreg-sweep-summary"}


def check(command: Command) -> str:
    """What was checked, or an exception (the command's own error)."""
    argv = words(command.text)
    if shlex.join(argv) in ALLOWED:
        return f"allowed: {ALLOWED[shlex.join(argv)]}"
    while argv and re.match(r"^[A-Z_]+=", argv[0]):  # OMP_NUM_THREADS=1 python ...
        argv.pop(0)
    if argv[:1] == ["srun"]:
        argv = [w for w in (re.sub(r"\$\{?(\w+)\}?", lambda m: SLURM_ENV.get(m.group(1), m.group(0)), w)
                            for w in argv[1:]) if w != "$@"]
    if argv[:1] == ["sbatch"]:  # sbatch <recipe> <overrides>: the recipe's own srun line is its file's
        assert (ROOT / argv[1]).is_file(), argv[1]
        compose_checked("train", hydra_overrides(argv[2:]))
        return "sbatch recipe exists; overrides composed"
    if argv[:2] in (["python", "train.py"], ["vicreg-train"]) or argv[:1] == ["vicreg-train"]:
        rest = argv[2:] if argv[0] == "python" else argv[1:]
        compose_checked("train", hydra_overrides(rest))
        return "composed and checked (train)"
    if argv[:2] == ["python", "eval.py"] or argv[:1] == ["vicreg-eval"]:
        rest = argv[2:] if argv[0] == "python" else argv[1:]
        compose_checked("eval", hydra_overrides(rest))
        return "composed and checked (eval)"
    if argv[:2] == ["python", "-m"] and argv[2] in MODULES:
        argv = [MODULES[argv[2]], *argv[3:]]
    if argv[0] == "vicreg-search":
        parsed = parse_with(SCRIPTS["vicreg-search"], argv[1:])
        workers = parsed.namespace.workers or 1
        compose_checked("train", hydra_overrides(["hparams_search=vicreg_optuna", f"hydra.sweeper.workers={workers}",
                                                  *parsed.extras]))
        return "parsed (vicreg-search), overrides composed and checked"
    if argv[0] in SCRIPTS:
        parsed = parse_with(SCRIPTS[argv[0]], argv[1:])
        assert not parsed.extras, parsed.extras
        return f"parsed ({argv[0]})"
    if argv[0] == "python" and argv[1].startswith("benchmarks/"):
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from parse_commands import check as check_benchmark

        return check_benchmark(" ".join(argv[1:]))
    if argv[0] == "python" and argv[1].startswith("examples/"):
        parse_with(argv[1], argv[2:])
        return "parsed (example)"
    if argv[:3] == ["python", "-m", "pytest"]:
        markers = {line.split(":")[0] for line in PYPROJECT["tool"]["pytest"]["ini_options"]["markers"]}
        rest = iter(argv[3:])
        for word in rest:
            if word == "-m":
                used = set(re.findall(r"\w+", next(rest))) - {"and", "or", "not"}
                assert used <= markers, f"unregistered markers {used - markers}"
            elif not word.startswith("-"):
                assert (ROOT / word.split("::")[0]).exists(), word
        return "pytest: paths exist, markers registered"
    if argv[0] == "sphinx-build":
        from sphinx.cmd.build import get_parser

        args = get_parser().parse_args(argv[1:])
        assert (ROOT / args.sourcedir / "conf.py").is_file()
        return "parsed (sphinx-build)"
    raise AssertionError(f"not a command of this project and not in ALLOWED: {command.text!r}")


COMMANDS = commands()


@pytest.mark.parametrize("command", COMMANDS, ids=[f"{c.page}:{c.line}" for c in COMMANDS])
def test_every_command_in_the_docs_parses(command: Command) -> None:
    from vicreg_lightning.error_exit import describe_error

    try:
        check(command)
    except SystemExit as exit:  # argparse: its message is on stderr
        raise AssertionError(f"{command.page}:{command.line}: {command.text!r} exits {exit.code}") from None
    except Exception as error:  # noqa: BLE001 - the command's own error, as it would print it
        message = describe_error(error) or f"{type(error).__name__}: {error}"
        if command.error is not None:  # a console block shows this command failing
            assert message == command.error, f"{command.page}:{command.line}: shown {command.error!r}, got {message!r}"
            return
        raise AssertionError(f"{command.page}:{command.line}: {command.text!r} fails: {message}") from error
    # A command shown failing either fails here with the shown message, or later, where the tests of
    # its run check that message (weights that cannot be read: tests/integration/test_eval.py).


def test_the_allowed_commands_are_what_ci_runs() -> None:
    ci = {shlex.join(shlex.split(line, comments=True)) for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    for allowed in ALLOWED:
        assert allowed.removeprefix("sudo ") in ci, allowed
    assert "dev" in PYPROJECT["project"]["optional-dependencies"]
    assert (ROOT / "scripts" / "slurm_cluster.sh").is_file()


def test_every_command_block_was_found() -> None:
    """The blocks are read: a page's commands did not silently drop out of the check."""
    pages = {c.page for c in COMMANDS}
    assert {"README.md", "docs/configuration.md", "docs/scaling-out.md", "docs/evaluate.md", "docs/report.md"} <= pages
    assert sum(c.error is not None for c in COMMANDS) == 4
