"""The tests' warm processes (tests/warm.py) behave as new interpreters running the same command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests import warm
from tests.runs import ROOT

SCRIPT = """
import multiprocessing, os, sys, time
print(sys.argv[1:], os.getcwd(), os.environ.get("WARM_PROBE"), os.getpid(), os.getpgrp(), sys.path[0],
      multiprocessing.get_start_method())
print("to stderr", file=sys.stderr)
if sys.argv[1] == "sleep":
    time.sleep(60)
sys.exit(int(sys.argv[2]))
"""


def test_a_warm_process_has_its_own_pid_arguments_directory_environment_output_and_exit_code(tmp_path):
    script = tmp_path / "probe.py"
    script.write_text(SCRIPT)
    proc = warm.run([sys.executable, str(script), "exit", "3"], cwd=tmp_path, env={**os.environ, "WARM_PROBE": "x"},
                    start_new_session=True)
    cwd, probe, pid, group, path0, start_method = proc.stdout.rsplit("] ", 1)[1].split()
    assert proc.returncode == 3 and proc.stderr == "to stderr\n"
    assert proc.stdout.startswith("['exit', '3']") and (cwd, probe, path0) == (str(tmp_path), "x", str(tmp_path))
    assert pid == group != str(os.getpid())  # its own session
    # Its loader workers start as a new interpreter's would (not from the warm server).
    cold = subprocess.run([sys.executable, str(script), "exit", "0"], capture_output=True, text=True, cwd=tmp_path)
    assert start_method == cold.stdout.split()[-1]
    # A signal ends it as it ends any process: returncode -signal.
    sleeper = warm.popen([sys.executable, str(script), "sleep", "0"], cwd=tmp_path)
    time.sleep(0.5)
    sleeper.send_signal(signal.SIGTERM)
    assert sleeper.wait(30) == -signal.SIGTERM


def test_a_command_says_the_same_warm_and_in_a_new_interpreter(tmp_path):
    command = [sys.executable, str(ROOT / "train.py"), "data.batch_size=1", f"hydra.run.dir={tmp_path / 'run'}"]
    cold = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300)
    warmed = warm.run(command, cwd=ROOT, timeout=300)
    assert cold.returncode == warmed.returncode == 2
    assert (cold.stdout, cold.stderr) == (warmed.stdout, warmed.stderr) and "data.batch_size=1" in cold.stderr
