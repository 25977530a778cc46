"""data=shards: vicreg-shard's LitData shards of an image folder train as the folder does
(``indexed``: the same batches and views, the same resume), or in LitData's order (``stream``)
with exact resume; bad shard sets are one line each."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from tests.fake_data import corrupt_png_body, write_image_folder
from tests.runs import compose_eval, compose_train, configs, weights
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


def test_a_folder_without_val_is_sharded_with_its_seeded_split(tmp_path):
    write_image_folder(tmp_path / "images" / "train", classes=2, per_class=5, size=16)
    assert shard([str(tmp_path / "images"), str(tmp_path / "shards"), "--set", "val_fraction=0.4"]) == 0
    folder = build_datasets(configs("imagefolder", root=str(tmp_path / "images"), val_fraction=0.4)[0])
    shards = build_datasets(configs("shards", input_dir=str(tmp_path / "shards"))[0])
    for folder_split, shard_split in zip(folder[:2], shards[:2]):
        assert len(shard_split) == len(folder_split) and shard_split.targets == [y for _, y in folder_split]
        assert all(torch.equal(folder_split[i][0], shard_split[i][0]) for i in range(len(folder_split)))


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


TWO_EPOCHS = ("trainer.max_epochs=2", "data.num_workers=1")


@pytest.fixture(scope="module")
def indexed_run(folder_and_shards, tmp_path_factory) -> Path:
    """Two epochs on the shards (data.access=indexed, the default), uninterrupted."""
    run_dir = tmp_path_factory.mktemp("indexed") / "straight"
    cfg = compose_train(*shards_run(folder_and_shards[1], run_dir, *TWO_EPOCHS))
    assert run(cfg)["step"] == 6
    (run_dir / ".hydra").mkdir()
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")  # what train.py's Hydra job writes
    return run_dir


def test_indexed_shards_resume_from_sigterm_mid_epoch_with_bit_identical_weights(folder_and_shards, indexed_run,
                                                                                  tmp_path):
    stopped_and_resumed(folder_and_shards[1], tmp_path / "run", 4, *TWO_EPOCHS)
    assert_same_weights(indexed_run, tmp_path / "run")


def test_eval_export_and_report_read_a_shards_run(folder_and_shards, indexed_run, tmp_path):
    from vicreg_lightning.evaluate import run as evaluate
    from vicreg_lightning.export import export
    from vicreg_lightning.report.source import load_for_report

    root, shards = folder_and_shards
    knn = ["eval=knn", "eval.knn.k=[3]"]
    on_shards = evaluate(compose_eval(f"weights={indexed_run}", *knn, f"paths.output_dir={tmp_path / 'shards'}"))
    # The same weights on the folder the shards were written from: the same images, the same numbers.
    on_folder = evaluate(compose_eval(f"weights={indexed_run}", *knn, "data=imagefolder", f"data.root={root}",
                                      "augment.size=16", "augment.val_resize=16",  # the run's (the preset has its own)
                                      f"paths.output_dir={tmp_path / 'folder'}"))
    accuracies = [{k: v for k, v in metrics.items() if "acc" in k} for metrics in (on_shards, on_folder)]
    assert "eval/knn3_acc1" in accuracies[0] and accuracies[0] == accuracies[1]
    encoder = load_for_report(export(indexed_run, tmp_path / "export"))
    assert encoder.data.name == "shards" and encoder.data.input_dir == str(shards)


def test_stream_resumes_exactly_mid_epoch_at_an_epochs_end_and_in_a_later_epoch(folder_and_shards, tmp_path):
    """Each resumed run ends with the uninterrupted run's weights; a resume mid-epoch that replayed
    the saved position in the next epoch (LitData's restore flag under Lightning) would not."""
    _, shards = folder_and_shards
    stream = ("data.access=stream", "data.num_workers=2", "trainer.max_epochs=2")
    assert run(compose_train(*shards_run(shards, tmp_path / "straight", *stream)))["step"] == 6
    for step in (1, 3, 4):  # within the first epoch, at its end, within the second
        stopped_and_resumed(shards, tmp_path / f"stopped_at_{step}", step, *stream)
        assert_same_weights(tmp_path / "straight", tmp_path / f"stopped_at_{step}")


def one_line_exit_2(capsys, call) -> str:
    """The error line of ``call()``, which must exit with code 2 after printing one line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exited:
        call()
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err


def test_vicreg_shard_refuses_a_non_empty_output_or_no_images_and_restarts_a_stopped_run(
        folder_and_shards, tmp_path, capsys, monkeypatch):
    import vicreg_lightning.data.shard_writer as writer

    root, _ = folder_and_shards
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    assert "is not empty" in one_line_exit_2(capsys, lambda: shard([str(root), str(taken)]))
    assert [p.name for p in taken.iterdir()] == ["notes.txt"] and (taken / "notes.txt").read_text() == "mine"
    (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
    assert "no images" in one_line_exit_2(capsys, lambda: shard([str(tmp_path / "empty"), str(tmp_path / "out")]))
    assert not (tmp_path / "out").exists()

    out, real_write_split = tmp_path / "stopped", writer.write_split

    def stopped_in_val(folder, *args):
        if folder.name == "val":
            raise KeyboardInterrupt
        real_write_split(folder, *args)

    monkeypatch.setattr(writer, "write_split", stopped_in_val)
    with pytest.raises(KeyboardInterrupt):
        shard([str(root), str(out)])
    monkeypatch.undo()
    data = configs("shards", input_dir=str(out))[0]
    with pytest.raises(DataError, match="an unfinished vicreg-shard run .* run the same vicreg-shard command again"):
        inspect_data(data)
    assert "other settings" in one_line_exit_2(capsys, lambda: shard([str(root), str(out), "--seed", "1"]))
    assert shard([str(root), str(out)]) == 0  # the same command again finishes it
    assert inspect_data(data) == 3 and not (out / UNFINISHED).exists()


def corrupted(shards: Path, folder: Path, change) -> Path:
    shutil.copytree(shards, folder)
    change(folder)
    return folder


def edit_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    for key, value in changes.items():
        target = manifest
        *parents, last = key.split("__")
        for parent in parents:
            target = target[parent]
        target[last] = value
    (folder / MANIFEST).write_text(json.dumps(manifest))


def truncate_a_chunk(folder: Path) -> None:
    chunk = sorted((folder / "train").glob("chunk-*.bin"))[1]
    chunk.write_bytes(chunk.read_bytes()[:-100])


def test_bad_shard_sets_are_one_line_each(folder_and_shards, tmp_path, monkeypatch):
    _, shards = folder_and_shards
    cases = {
        "no such folder": tmp_path / "nowhere",
        r"val/index.json is missing \(a partial copy\?\)": corrupted(
            shards, tmp_path / "partial", lambda f: (f / "val" / "index.json").unlink()),
        r"train/index.json holds 24 records, manifest.json says 25": corrupted(
            shards, tmp_path / "mismatch", lambda f: edit_manifest(f, splits__train__count=25)),
        r"chunk train/chunk-\S+ is \d+ bytes, \d+ expected \(truncated": corrupted(
            shards, tmp_path / "truncated", truncate_a_chunk),
        "shards of format version 2, this vicreg-lightning reads version 1; write them again": corrupted(
            shards, tmp_path / "future", lambda f: edit_manifest(f, format_version=2)),
    }
    for message, folder in cases.items():
        with pytest.raises(DataError, match=message) as error:
            inspect_data(configs("shards", input_dir=str(folder))[0])
        assert "\n" not in str(error.value) and str(folder) in str(error.value)
    # A manifest of another order: the first record read says so.
    other = corrupted(shards, tmp_path / "other_seed", lambda f: edit_manifest(f, seed=7))
    train, _, _ = build_datasets(configs("shards", input_dir=str(other))[0])
    with pytest.raises(DataError, match="holds sample .* where its manifest puts"):
        [train[i] for i in range(len(train))]

    # An object store that refuses connections: one line within the timeout, no hang.
    for key, value in {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "test",
                       "AWS_SECRET_ACCESS_KEY": "test", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(key, value)
    start = time.monotonic()
    with pytest.raises(DataError, match=r"data.input_dir='s3://vicreg-test/shards': (cannot read manifest.json|no answer)"):
        inspect_data(configs("shards", input_dir="s3://vicreg-test/shards", remote_timeout_s=3)[0])
    assert time.monotonic() - start < 10


def test_a_mid_epoch_checkpoint_resumes_only_with_its_own_access(folder_and_shards):
    from vicreg_lightning.errors import ConfigError

    _, shards = folder_and_shards
    for access, saved in (("indexed", {"epoch": 1, "batch": 2, "loader": {}}), ("stream", {"epoch": 1, "batch": 2})):
        dm = VICRegDataModule(*configs("shards", input_dir=str(shards), access=access), seed=0)
        with pytest.raises(ConfigError, match="saved mid-epoch with data.access=.*; resume with that data.access"):
            dm.load_state_dict({"train_position": saved})
        dm.load_state_dict({"train_position": {**saved, "batch": 0}})  # an epoch's start suits both


def test_a_file_whose_body_does_not_decode_is_refused_by_vicreg_shard_and_named_if_a_shard_holds_one(
        tmp_path, capsys):
    from vicreg_lightning.data.shards import decoded

    root = tmp_path / "images"
    write_image_folder(root / "train", classes=2, per_class=3, size=24)
    corrupt_png_body(root / "train" / "class1" / "2.png")
    line = one_line_exit_2(capsys, lambda: shard([str(root), str(tmp_path / "out")]))
    assert "class1/2.png: its body does not decode" in line and not (tmp_path / "out" / MANIFEST).exists()
    # Shards written before the writer decoded every image: the sample is named when it is read.
    with pytest.raises(DataError, match="sample 7 of s3://bucket/shards/train does not decode .* write the shards again"):
        decoded({"id": 7, "image": (root / "train" / "class1" / "2.png").read_bytes()}, "s3://bucket/shards/train")
