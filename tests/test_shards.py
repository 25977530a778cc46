"""data=shards: vicreg-shard's LitData shards of an image folder train as the folder does
(``indexed``: the same batches and views, the same resume), or in LitData's order (``stream``)
with exact resume; bad shard sets are one line each."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.fake_data import write_image_folder
from tests.runs import compose_train, configs, weights
from vicreg_lightning.cli import shard
from vicreg_lightning.data.catalog import inspect_data
from vicreg_lightning.data.datamodule import VICRegDataModule
from vicreg_lightning.data.datasets import build_datasets
from vicreg_lightning.data.shard_format import MANIFEST, SPLITS, UNFINISHED
from vicreg_lightning.errors import DataError
from vicreg_lightning.train import run

pytestmark = pytest.mark.xdist_group("shards")
BATCH = 8  # 24 training images: 3 steps per epoch


@pytest.fixture(scope="module")
def folder_and_shards(tmp_path_factory) -> tuple[Path, Path]:
    """A generated image folder (train/ and val/ of 3 classes) and its shards, in chunks of a few
    images each, so that LitData's stream order has many chunks to mix."""
    base = tmp_path_factory.mktemp("shards")
    root = base / "images"
    write_image_folder(root / "train", classes=3, per_class=8, size=24)
    write_image_folder(root / "val", classes=3, per_class=2, size=24)
    assert shard([str(root), str(base / "shards"), "--chunk-bytes", "6KB"]) == 0
    return root, base / "shards"


def test_shards_round_trip_the_folders_ids_labels_and_bytes(folder_and_shards):
    from litdata import StreamingDataset

    root, shards = folder_and_shards
    train, val, num_classes = build_datasets(configs("imagefolder", root=str(root))[0])
    manifest = json.loads((shards / MANIFEST).read_text())
    assert manifest["classes"] == train.classes and num_classes == 3
    for split, folder in zip(SPLITS, (train, val)):
        records = StreamingDataset(str(shards / split))
        stored = [records[position] for position in range(len(records))]
        ids = [record["id"] for record in stored]
        assert sorted(ids) == list(range(len(folder))) and manifest["splits"][split]["count"] == len(folder)
        for record in stored:
            path, label = folder.samples[record["id"]]
            assert record["label"] == label and bytes(record["image"]) == Path(path).read_bytes()
    # Stored in a seeded order, not class by class; several chunks per split.
    assert ids != sorted(ids) and len(list((shards / "train").glob("chunk-*.bin"))) > 3


def epoch_batches(data_name: str, location: Path, workers: int, world: int = 1, rank: int = 0) -> list:
    """``[epoch][step] -> (view_a, view_b, labels)`` of one rank over 2 epochs, from one loader."""
    where = {"input_dir": str(location)} if data_name == "shards" else {}
    data, aug = configs(data_name, root=str(location), size=16, batch_size=BATCH, num_workers=workers,
                        persistent_workers=True, **where)
    dm = VICRegDataModule(data, aug, seed=0)
    dm.trainer = SimpleNamespace(world_size=world, global_rank=rank)
    dm.setup("fit")
    loader = dm.train_dataloader()
    result = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        result.append([(view_a, view_b, labels) for (view_a, view_b), labels in loader])
    return result


def assert_same_batches(batches: list, reference: list, rank: int = 0, world: int = 1) -> None:
    """``batches`` (of one of ``world`` ranks) are ``reference``'s, step by step: tensors equal."""
    assert [len(steps) for steps in batches] == [len(steps) for steps in reference]
    for steps, reference_steps in zip(batches, reference):
        for batch, whole in zip(steps, reference_steps):
            assert all(torch.equal(x, y[rank::world]) for x, y in zip(batch, whole, strict=True))


def test_indexed_shards_give_the_folders_batches_and_views_for_any_workers_and_devices(folder_and_shards):
    root, shards = folder_and_shards
    folder = epoch_batches("imagefolder", root, workers=0)
    assert len(folder[0]) == 3 and not torch.equal(folder[0][0][0], folder[1][0][0])
    for workers in (0, 2):
        assert_same_batches(epoch_batches("shards", shards, workers), folder)
    for rank in (0, 1):  # each of 2 devices: every other sample of the same global batch
        assert_same_batches(epoch_batches("shards", shards, workers=0, world=2, rank=rank), folder, rank, world=2)


def shards_run(shards: Path, output_dir: Path, *overrides: str) -> list[str]:
    return ["experiment=smoke", "data=shards", f"data.input_dir={shards}", f"data.batch_size={BATCH}",
            "augment.size=16", "augment.val_resize=16", "augment.blur_kernel_size=3", "model.expander=32-32",
            "trainer.limit_train_batches=null", "trainer.limit_val_batches=1", "callbacks.representation_health=null",
            "logger=none", f"paths.output_dir={output_dir}", *overrides]


def stopped_and_resumed(shards: Path, run_dir: Path, step: int, *overrides: str) -> None:
    """A run stopped by SIGTERM after ``step`` steps (its checkpoint saved), then resumed with
    ``ckpt_path=last`` to its end."""
    kill = ["+callbacks.kill._target_=tests.helpers.SignalAtStep", f"+callbacks.kill.step={step}"]
    with pytest.raises(SystemExit) as stopped:
        run(compose_train(*shards_run(shards, run_dir, *overrides, *kill)))
    assert stopped.value.code == 143
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert saved["global_step"] == step
    run(compose_train(*shards_run(shards, run_dir, *overrides, "ckpt_path=last")))


def assert_same_weights(a_dir: Path, b_dir: Path) -> None:
    a, b = weights(a_dir), weights(b_dir)
    assert [name for name in a if not torch.equal(a[name], b[name])] == []


def test_indexed_shards_resume_from_sigterm_mid_epoch_with_bit_identical_weights(folder_and_shards, tmp_path):
    _, shards = folder_and_shards
    two_epochs = ("trainer.max_epochs=2", "data.num_workers=1")
    assert run(compose_train(*shards_run(shards, tmp_path / "straight", *two_epochs)))["step"] == 6
    stopped_and_resumed(shards, tmp_path / "run", 4, *two_epochs)
    assert_same_weights(tmp_path / "straight", tmp_path / "run")


def test_stream_resumes_exactly_mid_epoch_at_an_epochs_end_and_in_a_later_epoch(folder_and_shards, tmp_path):
    """Each resumed run ends with the uninterrupted run's weights; a resume mid-epoch that replayed
    the saved position in the next epoch (LitData's restore flag under Lightning) would not."""
    _, shards = folder_and_shards
    stream = ("data.access=stream", "data.num_workers=2", "trainer.max_epochs=3")
    assert run(compose_train(*shards_run(shards, tmp_path / "straight", *stream)))["step"] == 9
    for step in (1, 3, 4):  # within epoch 0, at its end, within epoch 1
        stopped_and_resumed(shards, tmp_path / f"stopped_at_{step}", step, *stream)
        assert_same_weights(tmp_path / "straight", tmp_path / f"stopped_at_{step}")
