"""``hydra/launcher=slurm``: hydra-submitit-launcher's SLURM launcher, asking sbatch for what the
trainer will use (:func:`vicreg_lightning.slurm.resolve_allocation`), checked against the partition
before any job is submitted. (Here because Hydra looks for plugins in the ``hydra_plugins``
namespace, and imports each of them at start-up: nothing heavy at module level.)"""

from __future__ import annotations

from collections.abc import Sequence

from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher


class TrainerSlurmLauncher(SlurmLauncher):
    """The submitit SLURM launcher with the allocation derived from ``trainer.*``."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from vicreg_lightning.slurm import read_partition, resolve_allocation

        assert self.config is not None
        self.params = resolve_allocation(self.params, self.config.trainer, read_partition(self.params["partition"]))
        return super().launch(job_overrides, initial_job_idx)
