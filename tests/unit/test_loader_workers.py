"""Loader workers and stop signals: a scheduler's SIGTERM (sent twice by srun) is left to the main
process; the main process's own SIGTERM ends a worker."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time

import pytest

from vicreg_lightning.data.datamodule import ignore_stop_signals


def _worker(ready) -> None:
    ignore_stop_signals(0)
    ready.set()
    time.sleep(60)


@pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="the sender of a signal is read on Linux only")
def test_a_worker_outlives_srun_s_two_sigterms_and_ends_on_its_main_process_s():
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    worker = context.Process(target=_worker, args=(ready,), daemon=True)
    worker.start()
    try:
        assert ready.wait(30)
        # A preemption under srun: the step's SIGTERM and srun's, from processes other than the main one.
        for _ in range(2):
            subprocess.run(["kill", "-TERM", str(worker.pid)], check=True)
        worker.join(1.0)
        assert worker.is_alive(), f"the worker ended on a scheduler's SIGTERM (exit code {worker.exitcode})"
        os.kill(worker.pid, signal.SIGTERM)  # the main process's, as multiprocessing's terminate() sends
        worker.join(30)
        assert worker.exitcode == 128 + signal.SIGTERM
    finally:
        if worker.is_alive():
            worker.kill()
