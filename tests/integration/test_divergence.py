"""The training step reads nothing from the device between logging steps."""

from __future__ import annotations

from tests.helpers import CountHostSyncs
from tests.runs import compose_train
from vicreg_lightning.train import run


def test_the_training_step_reads_nothing_from_the_device_between_logging_steps(tmp_path):
    # The loader workers (default: one, persistent) draw the augmentations in their own processes.
    # Two epochs: the second runs after a validation, whose metrics must not be read step by step.
    per_epoch, every = 5, 4
    steps = 2 * per_epoch
    run(compose_train(
        "trainer.max_epochs=2", f"trainer.limit_train_batches={per_epoch}", f"trainer.log_every_n_steps={every}",
        "data.batch_size=32", "model.expander=64-64", "augment.size=16",
        "augment.val_resize=16", "trainer.limit_val_batches=1", "callbacks.representation_health.every_n_steps=4",
        "+callbacks.count._target_=tests.helpers.CountHostSyncs", f"paths.output_dir={tmp_path}",
    ))
    calls = CountHostSyncs.steps
    assert sorted(calls) == list(range(steps))
    logging_steps = {step for step in range(steps) if (step + 1) % every == 0 or step % per_epoch == per_epoch - 1}
    assert {step: n for step, n in calls.items() if step not in logging_steps} == dict.fromkeys(
        set(range(steps)) - logging_steps, 0)
    # A negative control: the logging steps do read (the logged values, the divergence check).
    assert all(calls[step] > 0 for step in logging_steps)
