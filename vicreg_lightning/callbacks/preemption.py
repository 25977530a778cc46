"""CheckpointOnPreemption: a checkpoint when the run is stopped (SIGTERM, Ctrl-C, a requeue signal),
and a validation that a signal interrupts is finished first."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Timer
from lightning.pytorch.utilities.exceptions import SIGTERMException

from vicreg_lightning import slurm
from vicreg_lightning.patches import take_stop_request

# The exit code of a process stopped by SIGTERM (128 + 15): a scheduler or a sweep must not take
# a preempted run for a finished one.
PREEMPTED_EXIT_CODE = 143

# A SIGTERM held through a run's last validation lets that run finish, but the process still owes
# the stop: a sweep must not go on to its next job. train.py notes it; the sweeps honour it.
_stop_owed = False


def owe_stop() -> None:
    global _stop_owed
    _stop_owed = True


def stop_owed() -> bool:
    """Whether a run of this process finished with a SIGTERM that it held through its last validation."""
    return _stop_owed


def end_if_stop_owed(done: str) -> None:
    """End the process with :data:`PREEMPTED_EXIT_CODE` if a stop is owed, once ``done`` (what
    finished and is saved, said on stderr) is."""
    if _stop_owed:
        print(f"stopped (SIGTERM) after {done}", file=sys.stderr)
        raise SystemExit(PREEMPTED_EXIT_CODE)


class CheckpointOnPreemption(pl.Callback):
    """Save ``<dirpath>/last.ckpt`` when the run is stopped by SIGTERM (preemption, ``scancel``,
    ``kill``) or by a scheduler's requeue signal, so that ``ckpt_path=last`` continues from the
    last finished step.

    Lightning turns SIGTERM into :class:`SIGTERMException` at the end of the current step, on all
    ranks at once (rank 0's flag is broadcast), so the checkpoint is taken at a step boundary.
    Other exceptions save nothing: a diverged or crashed run must not replace the last good
    checkpoint.

    Ctrl-C (SIGINT) takes the same path: the run stops at the end of the step, saves, and exits as
    a preempted run does; a second Ctrl-C stops it at once, saving nothing.

    A signal that arrives during validation, or during the training step after which the epoch is
    validated, is held until the validation has ended: Lightning would stop in the middle of it (or
    before it), and the resumed run would not validate that epoch again (no metrics, no best
    checkpoint for it). The run stops right after it instead.

    ``requeue_signals`` (default ``SIGUSR1`` and ``SIGUSR2``: what ``sbatch --signal`` and submitit
    send before the time limit) are turned into SIGTERM's clean stop, the checkpoint is saved, and
    then, once the Trainer has shut down (:meth:`hand_over`, which the run calls): the handler that
    waited for the signal runs where there is one (submitit's, which requeues the job and exits);
    else, in a SLURM job, rank 0 requeues it (:func:`vicreg_lightning.slurm.requeue`). One
    checkpoint per signal: Lightning's own SLURM auto-requeue, which would write an
    ``hpc_ckpt_N.ckpt`` besides, is off (:func:`vicreg_lightning.slurm.cluster_environment`).
    """

    def __init__(self, dirpath: str, filename: str = "last",
                 requeue_signals: Sequence[str] = ("SIGUSR1", "SIGUSR2")) -> None:
        self.path = Path(dirpath) / f"{filename}.ckpt"
        self._time_path = Path(dirpath) / f".{filename}-max-time.ckpt"
        self.requeue_signals = [signal.Signals[name] for name in requeue_signals]
        self._replaced: dict[signal.Signals, Any] = {}
        self._pending: tuple[Any, signal.Signals] | None = None
        self._interrupt_handler: Any = None
        self._held_handler: Any = None
        self._held_signal = False
        self._global_zero = True
        self._timer: Timer | None = None
        self.stopped_by_time = False  # by trainer.max_time, before the run's end: not finished

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        self._global_zero = trainer.is_global_zero
        self._timer = next((c for c in trainer.callbacks if isinstance(c, Timer)), None)  # trainer.max_time
        self._interrupt_handler = signal.signal(signal.SIGINT, self._stop_on_interrupt)
        for signum in self.requeue_signals:
            waiting = signal.getsignal(signum)
            if callable(waiting) or slurm.job_id() is not None:
                self._replaced[signum] = waiting
                signal.signal(signum, self._stop_then_hand_over)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        # trainer.max_time: Lightning's Timer stops after this step, and the epoch-end checkpoint
        # that follows counts the cut-short epoch as done; this step's is resumable.
        if self._timer is None or self.stopped_by_time:
            return
        out_of_time = trainer.strategy.broadcast((self._timer.time_remaining() or 0.0) <= 0)
        if out_of_time and not (trainer.is_last_batch and trainer.current_epoch + 1 >= trainer.max_epochs):
            trainer.save_checkpoint(self._time_path)
            self.stopped_by_time = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After the epoch-end checkpoints, which the stop would otherwise leave as the last one.
        if self.stopped_by_time and trainer.is_global_zero:
            os.replace(self._time_path, self.path)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if threading.current_thread() is threading.main_thread() and self._held_handler is None:
            # A stop asked for during the step before this validation waits for it too.
            self._held_signal = take_stop_request(trainer)
            self._held_handler = signal.signal(signal.SIGTERM, self._hold)

    def _hold(self, signum: int, frame: Any) -> None:
        self._held_signal = True

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._release(deliver=True)

    def _release(self, deliver: bool) -> None:
        """Give SIGTERM back to its handler, and (``deliver``) send one that arrived meanwhile."""
        if self._held_handler is None:
            return
        signal.signal(signal.SIGTERM, self._held_handler)
        self._held_handler = None
        if self._held_signal and deliver:
            os.kill(os.getpid(), signal.SIGTERM)
        self._held_signal = False

    def _stop_on_interrupt(self, signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, self._interrupt_handler)
        os.kill(os.getpid(), signal.SIGTERM)

    def _stop_then_hand_over(self, signum: int, frame: Any) -> None:
        if self._pending is not None:  # a second signal: the stop is under way already
            return
        self._pending = (self._replaced[signal.Signals(signum)], signal.Signals(signum))
        # Lightning's SIGTERM handler stops every rank at the end of this step.
        os.kill(os.getpid(), signal.SIGTERM)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._release(deliver=False)  # stopped during validation: nothing to hold any more
        if not isinstance(exception, SIGTERMException):
            return
        divergence = getattr(pl_module, "divergence", None)
        if divergence is not None and divergence.has_diverged():  # keep the last good checkpoint
            pl.utilities.rank_zero_warn(f"not saving {self.path}: the loss was non-finite since the last check")
            return
        trainer.save_checkpoint(self.path)
        pl.utilities.rank_zero_info(f"saved {self.path} at step {trainer.global_step}")

    def hand_over(self) -> None:
        """After a requeue signal stopped the run: run the handler that waited for it (it usually
        exits the process), or requeue the SLURM job (rank 0)."""
        if self._pending is None:
            return
        handler, signum = self._pending
        self._pending = None
        if callable(handler):
            handler(signum, None)
        elif self._global_zero:
            slurm.requeue()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.restore_signal_handlers()

    def restore_signal_handlers(self) -> None:
        """Put back the handlers :meth:`setup` replaced (the run calls it after every fit, also one
        that failed: Lightning then runs no ``teardown`` hook)."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum, handler in self._replaced.items():
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)
        self._replaced.clear()
        if self._interrupt_handler is not None:
            signal.signal(signal.SIGINT, self._interrupt_handler)
            self._interrupt_handler = None
