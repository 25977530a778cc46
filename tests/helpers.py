"""Callbacks that tests add to a real run with ``+callbacks.<name>._target_=tests.helpers.<Class>``."""

from __future__ import annotations

import os
import signal
import subprocess

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
    group, loader workers included, from another process, as a scheduler or a terminal's Ctrl-C
    does (a loader worker ends on its main process's own SIGTERM). (Start the run in a session of
    its own for that: ``start_new_session=True``.)"""

    def __init__(self, step: int, signal_name: str = "SIGTERM", group: bool = False) -> None:
        self.step, self.signal, self.group = step, signal.Signals[signal_name], group

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step and trainer.is_global_zero:
            if self.group:
                subprocess.run(["kill", f"-{self.signal.name[3:]}", "--", f"-{os.getpgid(0)}"], check=True,
                               start_new_session=True)
            else:
                os.kill(os.getpid(), self.signal)


class SignalDuringValidation(pl.Callback):
    """Send SIGTERM to this process in the middle of one epoch's validation (after its first batch)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: object,
                                batch: object, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not trainer.sanity_checking and trainer.current_epoch == self.epoch and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


class StandInRequeueHandler(pl.Callback):
    """Installs, when built (before the run's callbacks set up), a SIGUSR2 handler standing in for
    submitit's: it records that it ran and exits, as submitit's does after requeueing the job."""

    def __init__(self, marker: str) -> None:
        def requeue(signum: int, frame: object) -> None:
            with open(marker, "w") as f:
                f.write(f"requeued on signal {signum}\n")
            raise SystemExit(-1)

        signal.signal(signal.SIGUSR2, requeue)


class CountHostSyncs(pl.Callback):
    """Count, per training step, the calls that make the host wait for the device (a tensor read on
    the host: ``item``, ``tolist``, ``bool()``, ``float()``, ``int()``, ``numpy``), from one step's
    start to the next's. Counts land in the class attribute ``steps``: ``{step: calls}``."""

    READS = ("item", "tolist", "__bool__", "__float__", "__int__", "numpy")
    steps: dict[int, int] = {}

    def __init__(self) -> None:
        self.calls = 0
        self.originals: dict[str, object] = {}
        self.current: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import torch

        type(self).steps = {}
        for name in self.READS:
            original = getattr(torch.Tensor, name)
            self.originals[name] = original

            def counted(tensor, *args, _original=original, **kwargs):
                self.calls += 1
                return _original(tensor, *args, **kwargs)

            setattr(torch.Tensor, name, counted)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: object,
                             batch_idx: int) -> None:
        self._close_step()
        self.current, self.calls = trainer.global_step, 0

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_step()

    def _close_step(self) -> None:
        if self.current is not None:
            type(self).steps[self.current] = self.calls
        self.current = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        import torch

        for name, original in self.originals.items():
            setattr(torch.Tensor, name, original)


class PauseAtStep(pl.Callback):
    """At one step of a run's first attempt, write ``marker`` and wait (up to ``timeout`` s) for a
    stop to be asked for: a test can then signal the run, through its scheduler, at a known step.
    An attempt that finds the marker when it starts (a resumed one) does not wait; every rank of
    the first one does (a rank that went on would wait for the others in a collective)."""

    def __init__(self, step: int, marker: str, timeout: float = 120) -> None:
        self.step, self.marker, self.timeout = step, marker, timeout
        self.first_attempt = not os.path.exists(marker)

    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        import time

        if trainer.global_step != self.step or not self.first_attempt:
            return
        if trainer.is_global_zero:
            with open(self.marker, "w") as f:
                f.write(f"step {self.step}\n")
        deadline = time.monotonic() + self.timeout
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.05)
