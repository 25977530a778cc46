"""``data=shards``: vicreg-shard's shard sets (:mod:`~vicreg_lightning.data.shard_format`) read
with LitData, in two ways (``data.access``):

- ``indexed``: :class:`ShardImages`, a map-style data set (``ds[id] -> (image, label)``) that the
  training order of every data set (:class:`~vicreg_lightning.data.sampler.EpochSampler`) reads
  like an image folder: the same batches, views and resume, for any number of workers and devices;
- ``stream``: :class:`StreamViews` in LitData's own order (chunk by chunk, for object stores),
  loaded by :class:`StreamLoaders`. Each sample's views are still keyed by ``(seed, epoch, id)``.

Images are decoded from the stored bytes by the image folders' own decoder
(:func:`~vicreg_lightning.data.datasets.decode_rgb`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from vicreg_lightning.data.datasets import UNDECODABLE, decode_rgb
from vicreg_lightning.data.shard_format import litdata_offline, stored_order
from vicreg_lightning.errors import DataError

litdata_offline()
try:
    from litdata import StreamingDataLoader, StreamingDataset
except ImportError:  # the optional extra is not installed
    raise DataError("data=shards needs LitData: pip install 'vicreg-lightning[shards]'") from None


def split_location(data: Any, split: str) -> str:
    return f"{str(data.input_dir).rstrip('/')}/{split}"


def _store_options(data: Any) -> dict[str, Any]:
    """Where LitData caches an object store's chunks, and how much (unused for a local folder)."""
    return {"cache_dir": data.cache_dir, "max_cache_size": data.max_cache_size}


def decoded(record: dict[str, Any], location: str) -> Tensor:
    """The image of a stored record; one that does not decode (shards written before vicreg-shard
    decoded every image) is a :class:`DataError` naming it."""
    try:
        return decode_rgb(record["image"])
    except UNDECODABLE as error:
        raise DataError(f"data.input_dir: sample {record['id']} of {location} does not decode ({error}); write the "
                        "shards again with vicreg-shard, which refuses such a file by name") from None


class ShardImages(Dataset):
    """One split of a shard set, map-style: ``ds[id] -> (image, label)``, ``image`` a uint8
    ``(3, H, W)`` tensor. ``targets`` (the labels, from the manifest) and ``classes`` as an
    ImageFolder has them. LitData's reader is opened in each process that reads (loader workers
    included), not pickled."""

    def __init__(self, data: Any, split: str, manifest: dict[str, Any]) -> None:
        info = manifest["splits"][split]
        self.location, self.options = split_location(data, split), _store_options(data)
        self.targets: list[int] = info["labels"]
        self.classes = manifest["classes"]
        # position[id]: where sample `id` is stored.
        self.position = np.argsort(stored_order(manifest["seed"], info["count"]))
        self._records: StreamingDataset | None = None

    def __len__(self) -> int:
        return len(self.targets)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_records": None}

    def record(self, sample_id: int) -> dict[str, Any]:
        """The stored ``{"id", "image", "label"}`` of sample ``sample_id``."""
        if self._records is None:
            self._records = StreamingDataset(self.location, **self.options)
        record = self._records[int(self.position[sample_id])]
        if record["id"] != sample_id:
            raise DataError(
                f"data.input_dir: {self.location} holds sample {record['id']} where its manifest puts {sample_id} "
                "(the manifest belongs to other shards); write the shards again"
            )
        return record

    def __getitem__(self, sample_id: int) -> tuple[Tensor, int]:
        record = self.record(sample_id)
        return decoded(record, self.location), int(record["label"])


class StreamViews(StreamingDataset):
    """The training split in LitData's order, shuffled by ``seed`` and the epoch: each record
    becomes ``(transform(image, epoch, id), label)``, so a sample's views in an epoch are those
    of every other loader (``transform``: :class:`~vicreg_lightning.data.augment.Views`)."""

    def __init__(self, data: Any, transform: Callable[[Tensor, int, int], Any], seed: int) -> None:
        self.location = split_location(data, "train")
        super().__init__(self.location, shuffle=True, drop_last=True, seed=seed, **_store_options(data))
        self.views = transform

    def __getitem__(self, index: Any) -> tuple[Any, int]:
        record = super().__getitem__(index)
        # LitData counts epochs from 1 (StreamLoaders sets it from the trainer's, which count from 0).
        image = decoded(record, self.location)
        return self.views(image, self.current_epoch - 1, record["id"]), record["label"]


class StreamLoaders:
    """The training loader of ``data.access=stream``: a fresh ``StreamingDataLoader`` for every
    epoch, told the epoch; a saved mid-epoch state is loaded into the first one only.

    One loader across epochs would replay: Lightning stops after ``len(loader)`` batches without
    exhausting the loader, so LitData's restore flag, set by ``load_state_dict``, stays set, and
    the epoch after a mid-epoch resume would start again from the saved position.

    ``epoch``: the trainer's current epoch; ``start``: the saved ``{"epoch", "batch", "loader"}``."""

    def __init__(self, dataset: StreamViews, epoch: Callable[[], int], loader_args: dict[str, Any],
                 start: dict[str, Any] | None = None) -> None:
        self.dataset, self.epoch, self.loader_args, self.start = dataset, epoch, loader_args, start
        self.loader: StreamingDataLoader | None = None

    def _new_loader(self) -> StreamingDataLoader:
        return StreamingDataLoader(self.dataset, collate_fn=default_collate, **self.loader_args)

    def __len__(self) -> int:
        return len(self._new_loader())

    def __iter__(self) -> Iterator[Any]:
        # Decided at the first batch: Lightning calls iter() once beforehand to check the loader.
        epoch, start, self.start = self.epoch(), self.start, None
        loader = self.loader = self._new_loader()
        if start is not None and start["epoch"] == epoch and start.get("loader"):
            loader.load_state_dict(start["loader"])
        else:
            loader.current_epoch = epoch  # its __iter__ counts it up to LitData's epoch (from 1)
        yield from loader

    def state_at(self, batches_done: int) -> dict[str, Any] | None:
        """The loader's state after ``batches_done`` batches of this epoch (the trainer has fetched
        further ahead), as ``StreamingDataLoader.state_dict`` gives it; None at an epoch's start."""
        loader = self.loader
        if loader is None or batches_done == 0:
            return None
        samples, workers = batches_done * loader.batch_size, loader.num_workers
        dataset_state = copy.deepcopy(self.dataset.state_dict(samples, workers, loader.batch_size))
        dataset_state["current_epoch"] = loader.current_epoch
        # Batches come from the workers in turn: the last one counted came from this worker.
        return {"dataset": dataset_state, "current_epoch": loader.current_epoch, "num_samples_yielded": samples,
                "latest_worker_idx": (batches_done - 1) % max(1, workers)}


def shard_sets(data: Any) -> tuple[ShardImages, ShardImages, int]:
    """``(train, val, num_classes)`` of a shard set, checked (:func:`check_shards`)."""
    from vicreg_lightning.data.shard_format import check_shards

    manifest = check_shards(data)
    return ShardImages(data, "train", manifest), ShardImages(data, "val", manifest), len(manifest["classes"])
