"""The training data is a function of (seed, epoch, sample, view): the same views for any number of
loader workers and devices, and a saved position continues the same order."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch.utils.data import TensorDataset

from tests.runs import configs
from vicreg_lightning.data.datamodule import VICRegDataModule
from vicreg_lightning.data.sampler import EpochSampler


BATCH = 16


def epoch_batches(workers: int = 0, world: int = 1, rank: int = 0, seed: int = 0, epochs: int = 2
                  ) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]]:
    """``[epoch][step] -> (view_a, view_b, labels)`` of one rank, the first 3 steps of each epoch,
    from one loader (persistent workers carry over from epoch to epoch)."""
    data, aug = configs("digits", size=8, batch_size=BATCH, num_workers=workers, persistent_workers=True)
    dm = VICRegDataModule(data, aug, seed=seed)
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
    dm.setup("fit")
    loader = dm.train_dataloader()
    result = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        steps = []
        for step, ((view_a, view_b), labels) in enumerate(loader):
            steps.append((view_a, view_b, labels))
            if step == 2:
                break
        result.append(steps)
    return result


def sampler() -> EpochSampler:
    return EpochSampler(TensorDataset(torch.zeros(100)), num_replicas=2, rank=1, seed=3, batch_size=4)


def test_the_views_of_a_sample_are_the_same_for_any_number_of_workers_and_devices():
    reference = epoch_batches()
    with_workers = epoch_batches(workers=2)
    two_ranks = [epoch_batches(world=2, rank=rank) for rank in (0, 1)]
    for epoch in range(2):
        for step, (view_a, view_b, labels) in enumerate(reference[epoch]):
            assert all(torch.equal(x, y) for x, y in zip((view_a, view_b, labels), with_workers[epoch][step]))
            # Rank r trains on every other sample of the global batch: the same samples, the same views.
            for rank in (0, 1):
                for whole, part in zip((view_a, view_b, labels), two_ranks[rank][epoch][step]):
                    assert torch.equal(whole[rank::2], part)
    # The views change from epoch to epoch and with the seed (the comparison above can fail).
    assert not torch.equal(reference[0][0][0], reference[1][0][0])
    assert not torch.equal(reference[0][0][0], epoch_batches(seed=1, epochs=1)[0][0][0])


def test_a_position_saved_mid_epoch_continues_with_the_next_batch_of_the_same_order():
    uninterrupted = sampler()
    uninterrupted.set_epoch(5)
    order = list(uninterrupted)
    assert {epoch for epoch, _ in order} == {5} and len(order) == 50

    interrupted = sampler()
    interrupted.set_epoch(5)
    state = interrupted.position(batches_done=3, batches_per_epoch=10)
    assert state == {"epoch": 5, "batch": 3}
    resumed = sampler()
    resumed.start_at(state)
    assert list(resumed) == order[3 * 4:]
    assert list(resumed) == order, "the skip applies to the first iteration only"


def test_a_position_saved_at_an_epochs_end_starts_the_next_epoch():
    finished = sampler()
    finished.set_epoch(5)
    assert finished.position(batches_done=10, batches_per_epoch=10) == {"epoch": 6, "batch": 0}
