"""The training order, and its position in a checkpoint.

The order is a function of seed and epoch, with the same global batches on any number of devices;
its position (the epoch and the batches of it already trained on) is saved in every checkpoint, so
that a run resumed from any checkpoint, at an epoch's end or within one, goes on with the next
batch of the same order.
"""

from __future__ import annotations

from collections.abc import Iterator

from torch.utils.data import Dataset, DistributedSampler


def position(epoch: int, batches_done: int, batches_per_epoch: int | float) -> dict[str, int]:
    """Where the next batch comes from, ``batches_done`` batches into ``epoch`` of
    ``batches_per_epoch``: ``{"epoch": e, "batch": k}``."""
    if batches_done >= batches_per_epoch:
        return {"epoch": epoch + 1, "batch": 0}
    return {"epoch": epoch, "batch": batches_done}


class EpochSampler(DistributedSampler):
    """``DistributedSampler`` (shuffled by ``seed`` and the epoch; each rank takes every
    ``world_size``-th index, so that each step's global batch is the same set of samples whatever
    the number of ranks) that yields ``(epoch, index)`` keys: the loader workers then know the epoch
    of every sample they augment, persistent or not.

    :meth:`position` says where the order goes on after a given number of batches of the current
    epoch (what a checkpoint saves); :meth:`start_at` makes the next iteration start there.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int, batch_size: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.batch_size = batch_size
        self._skip_batches = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        skip, self._skip_batches = self._skip_batches * self.batch_size, 0
        epoch = self.epoch
        return ((epoch, index) for index in list(super().__iter__())[skip:])

    def position(self, batches_done: int, batches_per_epoch: int | float) -> dict[str, int]:
        """Where the next batch comes from, ``batches_done`` batches into this epoch of
        ``batches_per_epoch``: ``{"epoch": e, "batch": k}``."""
        return position(self.epoch, batches_done, batches_per_epoch)

    def start_at(self, position: dict[str, int]) -> None:
        """The next iteration (only) starts at ``position``'s batch of ``position``'s epoch."""
        self.set_epoch(position["epoch"])
        self._skip_batches = position["batch"]
