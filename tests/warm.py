"""Our commands (``python train.py ...``, ``python -m vicreg_lightning.report ...``) as processes of
their own, started warm: forked from a server process that has imported torch, torchvision, timm
and the other heavy libraries once (multiprocessing's forkserver; :data:`PRELOAD`), where a new
interpreter spends seconds of CPU importing them for every run, most of what a short test run costs.

Each is still a process of its own: its pid, environment, working directory, stdout and stderr,
exit code (negative for a signal, as subprocess's), signals and, when asked, its own session; it
runs the script as ``python <script>`` does (``runpy``, as ``__main__``, ``sys.argv`` and
``sys.path[0]`` set alike) and its exit handlers at the end. Its DDP ranks and loader workers are
processes as a new interpreter's would be. What a warm process cannot show is what happens while
an interpreter starts: tests of that (start-up imports, the installed console scripts, a fresh
environment) start a new interpreter (``subprocess``).

``WARM_PROCESSES=0`` starts every command in a new interpreter instead.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Any

# Imported once by the server: the heavy libraries under our commands, whose import leaves no
# state that depends on when it happens. Not Lightning: it gives its loggers a handler of their
# own only when the root logger has none yet, so a command shows other output whether Lightning was
# imported before or after Hydra set up logging; the command imports it as a new interpreter does.
PRELOAD = ["torch", "torchvision.models", "torchmetrics.functional", "timm", "cv2", "numpy", "PIL.Image",
           "sklearn.model_selection", "hydra", "omegaconf"]
ENABLED = os.environ.get("WARM_PROCESSES", "1") != "0"


def _child(argv: list[str], env: dict[str, str], cwd: str, out: str | None, err: str | None,
           new_session: bool) -> None:
    """Run in the forked process: become ``python <argv>`` and exit as it would."""
    if new_session:
        os.setsid()
    for fd, path in ((1, out), (2, err)):
        if path is not None:
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(target, fd)
            os.close(target)
    if err is None:  # stderr into stdout
        os.dup2(1, 2)
    # A new interpreter's start method for its own processes (loader workers), not the server's.
    multiprocessing.set_start_method(None, force=True)
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    # As a new interpreter: default signal dispositions, whatever the server inherited.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)
    code, interrupted = 0, False
    try:
        if argv[0] == "-m":
            sys.argv = [argv[1], *argv[2:]]
            sys.path[0] = os.getcwd()
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            script = os.path.abspath(argv[0])
            sys.argv = [argv[0], *argv[1:]]
            sys.path[0] = os.path.dirname(script)
            runpy.run_path(script, run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
        if exit_.code is not None and not isinstance(exit_.code, int):
            print(exit_.code, file=sys.stderr)
    except KeyboardInterrupt:  # as the interpreter ends: the traceback, then killed by SIGINT
        traceback.print_exc()
        interrupted = True
    except BaseException:  # noqa: BLE001 - printed as the interpreter prints an uncaught error
        traceback.print_exc()
        code = 1
    # The exit handlers an interpreter runs as it ends (W&B finishing its runs, for one): a forked
    # child leaves by os._exit, which skips them, and atexit has no public call that runs them.
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    if interrupted:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(code)


class WarmProcess:
    """The part of :class:`subprocess.Popen` the tests use, for a warm process."""

    def __init__(self, args: list[str], cwd: str | Path, env: dict[str, str] | None, capture: bool,
                 start_new_session: bool, merge: bool = False) -> None:
        self.args = args
        self._folder = tempfile.mkdtemp(prefix="warm-") if capture else None
        out, err = ((os.path.join(self._folder, "stdout"), os.path.join(self._folder, "stderr"))
                    if self._folder else (os.devnull, os.devnull))
        if merge:  # stderr=subprocess.STDOUT
            err = None
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(PRELOAD)
        self._process = context.Process(
            target=_child, args=(args[1:], dict(os.environ if env is None else env), str(cwd), out, err,
                                 start_new_session), daemon=False)
        self._process.start()
        self.pid = self._process.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None and not self._process.is_alive():
            self.returncode = self._process.exitcode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self.poll() is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.output()

    def output(self) -> tuple[str, str]:
        if self._folder is None:
            return "", ""
        stdout, stderr = (Path(self._folder, name).read_text(errors="replace") if Path(self._folder, name).exists()
                          else "" for name in ("stdout", "stderr"))
        shutil.rmtree(self._folder, ignore_errors=True)
        self._folder = None
        return stdout, stderr


def _is_our_command(args: list[str]) -> bool:
    return ENABLED and len(args) >= 2 and args[0] == sys.executable and (
        args[1] == "-m" or args[1].endswith(".py"))


def popen(args: list[str], *, cwd: str | Path, env: dict[str, str] | None = None, capture: bool = False,
          merge: bool = False, start_new_session: bool = False) -> Any:
    """``subprocess.Popen(args, ...)`` with stdout and stderr to /dev/null, or with ``capture`` kept
    for ``communicate()`` (``merge``: stderr into stdout); warm when ``args`` is ``[sys.executable,
    <script.py> | -m <module>, ...]``."""
    if not _is_our_command(args):
        sink = subprocess.PIPE if capture else subprocess.DEVNULL
        return subprocess.Popen(args, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT if merge else sink,
                                text=True, start_new_session=start_new_session)
    return WarmProcess(args, cwd, env, capture, start_new_session, merge)


def run(args: list[str], *, cwd: str | Path, env: dict[str, str] | None = None, timeout: float | None = None,
        start_new_session: bool = False) -> subprocess.CompletedProcess:
    """``subprocess.run(args, capture_output=True, text=True, ...)``, warm for our commands. A
    timeout kills the process (its whole session, when it has one) and raises as subprocess's."""
    if not _is_our_command(args):
        return subprocess.run(args, cwd=cwd, env=env, timeout=timeout, capture_output=True, text=True,
                              start_new_session=start_new_session)
    process = WarmProcess(args, cwd, env, True, start_new_session)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        if start_new_session:
            os.killpg(process.pid, signal.SIGKILL)
        else:
            process.kill()
        process.wait()
        stdout, stderr = process.output()
        raise subprocess.TimeoutExpired(args, timeout, stdout, stderr) from None
    stdout, stderr = process.output()
    return subprocess.CompletedProcess(args, process.returncode, stdout, stderr)
