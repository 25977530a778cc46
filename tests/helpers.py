"""Callbacks that tests add to a real run with ``+callbacks.<name>._target_=tests.helpers.<Class>``."""

from __future__ import annotations

import os
import signal

import lightning.pytorch as pl


class FailOnRank(pl.Callback):
    """Raise on one rank at one step: a rank that dies mid-run."""

    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            raise RuntimeError(f"injected failure on rank {self.rank} at step {self.step}")


class SignalAtStep(pl.Callback):
    """Send a real signal after a given step: to this process, or (``group``) to its whole process
    group, loader workers included, as a scheduler or a terminal's Ctrl-C does. (Start the run in a
    session of its own for that: ``start_new_session=True``.)"""

    def __init__(self, step: int, signal_name: str = "SIGTERM", group: bool = False) -> None:
        self.step, self.signal, self.group = step, signal.Signals[signal_name], group

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            if self.group:
                os.killpg(os.getpgid(0), self.signal)
            else:
                os.kill(os.getpid(), self.signal)


class StandInRequeueHandler(pl.Callback):
    """Installs, when built (before the run's callbacks set up), a SIGUSR2 handler standing in for
    submitit's: it records that it ran and exits, as submitit's does after requeueing the job."""

    def __init__(self, marker: str) -> None:
        def requeue(signum: int, frame: object) -> None:
            with open(marker, "w") as f:
                f.write(f"requeued on signal {signum}\n")
            raise SystemExit(-1)

        signal.signal(signal.SIGUSR2, requeue)
