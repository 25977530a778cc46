"""The DataModule yields two differently augmented views with labels, for every data set kind."""

from __future__ import annotations

import pytest
import torch

from tests.fake_data import write_cifar, write_image_folder, write_imagenet, write_stl10
from tests.runs import configs
from vicreg_lightning.data.catalog import DATASETS, IMG_EXTENSIONS, UNLABELED, inspect_data
from vicreg_lightning.data.datamodule import VICRegDataModule
from vicreg_lightning.errors import ConfigError, DataError


def check_two_views(dm: VICRegDataModule, size: int, num_classes: int) -> None:
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    (raw_a, raw_b), _ = batch
    assert raw_a.dtype == raw_b.dtype == torch.uint8  # uint8 until the device
    (view_a, view_b), labels = dm.on_after_batch_transfer(batch, 0)
    assert view_a.shape == view_b.shape == (dm.data_cfg.batch_size, 3, size, size)
    assert view_a.dtype == torch.float32
    mean, std = torch.tensor(dm.augment_cfg.mean).view(3, 1, 1), torch.tensor(dm.augment_cfg.std).view(3, 1, 1)
    torch.testing.assert_close(view_b, (raw_b / 255 - mean) / std)
    assert labels.dtype == torch.int64 and labels.shape == (dm.data_cfg.batch_size,)
    assert ((labels >= 0) & (labels < num_classes) | (labels == UNLABELED)).all()
    # Two independent draws of the augmentation: the views differ, sample by sample.
    assert not torch.allclose(view_a, view_b)
    assert all(not torch.equal(a, b) for a, b in zip(view_a, view_b, strict=True))
    images, val_labels = next(iter(dm.val_dataloader()))
    assert images.shape[1:] == (3, size, size) and val_labels.dtype == torch.int64
    assert dm.num_classes == num_classes == inspect_data(dm.data_cfg)


def test_digits():
    dm = VICRegDataModule(*configs("digits", size=8, batch_size=16))
    check_two_views(dm, 8, 10)
    assert len(dm.train_set) + len(dm.val_set) == 1797
    assert len(dm.val_set) == pytest.approx(0.2 * 1797, abs=1)


def test_digits_split_is_seeded_and_stratified():
    first = VICRegDataModule(*configs("digits", size=8, split_seed=1))
    again = VICRegDataModule(*configs("digits", size=8, split_seed=1))
    other = VICRegDataModule(*configs("digits", size=8, split_seed=2))
    for dm in (first, again, other):
        dm.setup()
    labels = first.val_set.dataset.labels
    assert torch.equal(labels, again.val_set.dataset.labels)
    assert not torch.equal(labels, other.val_set.dataset.labels)
    counts = torch.bincount(labels, minlength=10)
    assert counts.min() >= 34 and counts.max() <= 38  # ~36 per class: stratified


@pytest.mark.parametrize("name,num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar(tmp_path, skip_integrity_checks, name, num_classes):
    write_cifar(tmp_path, num_classes)
    dm = VICRegDataModule(*configs(name, str(tmp_path), size=32))
    check_two_views(dm, 32, num_classes)
    assert len(dm.train_set) == 40 and len(dm.val_set) == 20


def test_stl10_pretrains_on_unlabeled_plus_train(tmp_path, skip_integrity_checks):
    write_stl10(tmp_path)
    dm = VICRegDataModule(*configs("stl10", str(tmp_path), size=32, batch_size=50))
    check_two_views(dm, 32, 10)
    assert len(dm.train_set) == 20 + 30 and len(dm.val_set) == 20
    labels = dm.train_set.dataset.labels
    assert (labels == UNLABELED).sum() == 30 and ((labels >= 0) & (labels < 10)).sum() == 20


def test_image_folder_with_val_split(tmp_path):
    write_image_folder(tmp_path / "train", classes=3)
    write_image_folder(tmp_path / "val", classes=3, per_class=2)
    dm = VICRegDataModule(*configs("imagefolder", str(tmp_path)))
    check_two_views(dm, 16, 3)
    assert len(dm.train_set) == 18 and len(dm.val_set) == 6


def test_image_folder_without_val_is_split(tmp_path):
    write_image_folder(tmp_path / "train", classes=2, per_class=10)
    dm = VICRegDataModule(*configs("imagefolder", str(tmp_path), val_fraction=0.2))
    check_two_views(dm, 16, 2)
    assert len(dm.train_set) == 16 and len(dm.val_set) == 4


def test_imagenet_layout(tmp_path):
    write_imagenet(tmp_path)
    dm = VICRegDataModule(*configs("imagenet", str(tmp_path)))
    # ImageNet has 1000 classes by definition; the fake one has 3, so check the data itself.
    dm.setup("fit")
    (view_a, view_b), labels = next(iter(dm.train_dataloader()))
    assert view_a.shape == (4, 3, 16, 16) and not torch.allclose(view_a, view_b)
    assert dm.num_classes == 3 and set(labels.tolist()) <= {0, 1, 2}


def test_empty_image_folder_is_a_clear_error(tmp_path):
    (tmp_path / "train").mkdir()
    dm = VICRegDataModule(*configs("imagefolder", str(tmp_path)))
    with pytest.raises(DataError, match="no class folders"):
        inspect_data(dm.data_cfg)
    with pytest.raises(DataError, match="no images in"):
        dm.setup()


def test_missing_folder_is_a_clear_error(tmp_path):
    dm = VICRegDataModule(*configs("imagefolder", str(tmp_path / "nope")))
    for check in (lambda: inspect_data(dm.data_cfg), dm.setup):  # before anything loads, and in setup
        with pytest.raises(DataError, match=f"^data.root='{tmp_path / 'nope'}': no folder"):
            check()


def test_missing_cifar_without_download_is_a_clear_error(tmp_path):
    dm = VICRegDataModule(*configs("cifar10", str(tmp_path), download=False))
    with pytest.raises(DataError, match="data.download=true"):
        dm.setup()


def test_batch_larger_than_the_data_is_refused(tmp_path):
    write_image_folder(tmp_path / "train", classes=2, per_class=3)
    dm = VICRegDataModule(*configs("imagefolder", str(tmp_path), batch_size=64))
    with pytest.raises(ConfigError, match="data.batch_size=64"):
        dm.setup()


def test_catalog_matches_torchvision():
    import torchvision
    from torchvision.datasets.folder import IMG_EXTENSIONS as TV_EXTENSIONS

    assert set(IMG_EXTENSIONS) == set(TV_EXTENSIONS)
    classes = {"cifar10": torchvision.datasets.CIFAR10, "cifar100": torchvision.datasets.CIFAR100,
               "stl10": torchvision.datasets.STL10}
    archives = {name: entry.archive_folder for name, entry in DATASETS.items() if entry.archive_folder}
    assert archives == {name: cls.base_folder for name, cls in classes.items()}


def test_inspect_data_refuses_class_folders_without_images(tmp_path):
    (tmp_path / "train" / "cats").mkdir(parents=True)
    (tmp_path / "train" / "cats" / "notes.txt").write_text("not an image")
    data, _ = configs("imagefolder", str(tmp_path))
    with pytest.raises(DataError, match="no images in"):
        inspect_data(data)


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    import torchvision

    def offline(*args, **kwargs):
        raise OSError("[Errno 101] Network is unreachable")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    dm = VICRegDataModule(*configs("cifar10", str(tmp_path), download=True))
    with pytest.raises(DataError, match="downloading into data.root=.* failed .*Network is unreachable"):
        dm.prepare_data()


def test_an_image_folder_with_one_class_is_refused(tmp_path):
    write_image_folder(tmp_path / "train", classes=1, per_class=4)
    with pytest.raises(DataError, match="one class folder .*'class0'.* need at least 2"):
        inspect_data(configs("imagefolder", str(tmp_path))[0])
