"""Stop a diverged run without making the device wait every step.

Checking ``torch.isfinite(loss)`` each step would copy a flag to the host each step: on a GPU the
host then waits for the step's kernels before it can queue the next step's. :class:`DivergenceWatch`
keeps, on the device, which loss terms have been non-finite and the first step at which one was;
the host reads them only when the run logs anyway (every ``trainer.log_every_n_steps`` steps and
at each epoch's end), and before a checkpoint is saved.
"""

from __future__ import annotations

import torch
from torch import Tensor

from vicreg_lightning.errors import NonFiniteEmbeddingError

TERMS = ("invariance", "variance", "covariance")


class DivergenceWatch:
    def __init__(self) -> None:
        self._bad_terms: Tensor | None = None  # one flag per term: non-finite since the last check
        self._first_bad_step: Tensor | None = None  # -1 while none was
        self._checked_up_to = -1  # the last step that was checked

    def update(self, step: int, invariance: Tensor, variance: Tensor, covariance: Tensor) -> None:
        """Record this step's terms: device operations only, nothing is read on the host."""
        bad = ~torch.isfinite(torch.stack([invariance, variance, covariance]).detach())
        if self._bad_terms is None or self._first_bad_step is None:
            self._bad_terms = torch.zeros_like(bad)
            self._first_bad_step = torch.full((), -1, dtype=torch.long, device=bad.device)
        self._bad_terms |= bad
        first_now = (self._first_bad_step < 0) & bad.any()
        self._first_bad_step = torch.where(first_now, step, self._first_bad_step)

    def check(self, step: int) -> None:
        """Raise :class:`NonFiniteEmbeddingError` naming the step and the terms if any term was
        non-finite up to ``step`` (reads the flags on the host: call it where the run syncs anyway)."""
        checked_from, self._checked_up_to = self._checked_up_to + 1, step
        if self._bad_terms is None or self._first_bad_step is None:
            return
        flags = self._bad_terms.tolist()
        if not any(flags):
            return
        terms = " and ".join(name for name, bad in zip(TERMS, flags) if bad)
        first = int(self._first_bad_step)
        raise NonFiniteEmbeddingError(
            f"non-finite VICReg loss at step {first} ({terms}; checked steps {checked_from}-{step}): training "
            "diverged; lower optim.base_lr, lengthen optim.warmup_epochs, or use trainer.precision=32-true"
        )

    def has_diverged(self) -> bool:
        return self._bad_terms is not None and bool(self._bad_terms.any())
