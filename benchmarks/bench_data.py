"""Two-view samples/s per loader worker: our pipeline against the official recipe's.

    python benchmarks/bench_data.py [--images 64] [--repeats 3] [--root <ImageFolder>] [--size 224]

Both pipelines run side by side in this one process, one thread (what one loader worker has), on
the same JPEG files: by default photo-like 500x375 images written to a temporary folder (about
ImageNet's mean size), or any ImageFolder given by ``--root``. Each sample is a decode and two views.

- official: ``facebookresearch/vicreg`` augmentations.py, torchvision v1 transforms on Pillow
  images, ending in ToTensor + Normalize (float32 views);
- ours: :func:`read_rgb` + :class:`Views` (OpenCV), uint8 views (normalised on the device);
- ours + CPU normalisation: the same, normalised to float32 in the worker, for a like-for-like row.

A second table compares where our pipeline reads the same images from (vicreg-shard writes them as
LitData shards in a temporary folder; the same decoder and views): the folder of JPEG files, the
local shards read by index (``data.access=indexed``), and streamed (``data.access=stream``).

With a GPU, ``--device cuda`` adds the on-device mode (``augment.on_device``): kornia on batches of
256 stored images, in samples/s of the GPU rather than per worker. The table prints samples/s and
the ratio to the official pipeline (above 1: faster).
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms as T
from omegaconf import OmegaConf
from PIL import Image, ImageFilter, ImageOps

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from vicreg_lightning.config import preset  # noqa: E402
from vicreg_lightning.data.augment import Normalize, Views, device_views, same_size  # noqa: E402
from vicreg_lightning.data.datasets import read_rgb  # noqa: E402
from vicreg_lightning.cli import shard  # noqa: E402



class OfficialGaussianBlur:
    """``augmentations.GaussianBlur`` of the official code: Pillow's blur, sigma ~ U(0.1, 2.0)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        if np.random.rand() < self.p:
            return img.filter(ImageFilter.GaussianBlur(radius=np.random.rand() * 1.9 + 0.1))
        return img


class OfficialSolarization:
    """``augmentations.Solarization`` of the official code."""

    def __init__(self, p: float) -> None:
        self.p = p

    def __call__(self, img: Image.Image) -> Image.Image:
        return ImageOps.solarize(img) if np.random.rand() < self.p else img


def official_view(size: int, blur_prob: float, solarize_prob: float) -> T.Compose:
    return T.Compose([
        T.RandomResizedCrop(size, interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(p=0.5),
        T.RandomApply([T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        OfficialGaussianBlur(p=blur_prob),
        OfficialSolarization(p=solarize_prob),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])


def official_pipeline(size: int) -> Callable[[str], object]:
    view_a, view_b = official_view(size, 1.0, 0.0), official_view(size, 0.1, 0.2)

    def sample(path: str) -> object:
        with open(path, "rb") as f:  # torchvision's pil_loader, as the official ImageFolder uses
            image = Image.open(f).convert("RGB")
        return view_a(image), view_b(image)

    return sample


def official_augment(size: int, **overrides: object) -> Any:
    """Our ``conf/augment/official.yaml`` at ``size`` px."""
    return OmegaConf.merge(preset("augment", "official"), {"size": size, **overrides})


def our_pipeline(size: int, normalize_on_cpu: bool) -> Callable[[str], object]:
    aug = official_augment(size)
    views = Views(aug, seed=0)
    normalize = Normalize(aug.mean, aug.std)
    # Each sample's draws are keyed by its index, as in training (the keyed generators count too).
    index = itertools.count()

    def sample(path: str) -> object:
        view_a, view_b = views(read_rgb(path), 0, next(index))
        if normalize_on_cpu:
            return normalize(view_a[None])[0], normalize(view_b[None])[0]
        return view_a, view_b

    return sample


def write_photos(folder: Path, count: int) -> list[str]:
    """Photo-like JPEGs (smooth colour fields with texture noise, quality 90), 500x375."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((500, 375), Image.BICUBIC)
        pixels = np.clip(np.asarray(coarse, dtype=np.float32) + rng.normal(0, 12, (375, 500, 3)), 0, 255)
        path = folder / f"{i}.jpg"
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        paths.append(str(path))
    return paths


def image_paths(root: Path, count: int) -> list[str]:
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    if not paths:
        raise SystemExit(f"--root {root}: no .jpg/.jpeg/.png files")
    return [str(p) for p in paths[:count]]


def samples_per_s(pipeline: Callable[[str], object], paths: list[str]) -> float:
    start = time.perf_counter()
    for path in paths:
        pipeline(path)
    return len(paths) / (time.perf_counter() - start)


def shard_readers(paths: list[str], folder: Path, size: int) -> dict[str, Callable[[str], object]]:
    """Our pipeline reading ``paths`` from vicreg-shard's shards of them (written into ``folder``):
    by index, and streamed (a pass restarts when the epoch is done). Each reads the next sample
    (the path is the folder pipeline's argument)."""
    from vicreg_lightning.data.shards import ShardImages, StreamViews
    from vicreg_lightning.data.shard_format import check_local

    for i, path in enumerate(paths):  # an ImageFolder of links: two classes, a val split of one image each
        for split in ("train", "val") if i < 2 else ("train",):
            link = folder / "images" / split / "ab"[i % 2] / Path(path).name
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(path)
    shard([str(folder / "images"), str(folder / "shards"), "--chunk-bytes", "16MB"])
    data = OmegaConf.create({"input_dir": str(folder / "shards"), "cache_dir": None, "max_cache_size": None})
    indexed = ShardImages(data, "train", check_local(folder / "shards"))
    views = Views(official_augment(size), seed=0)
    stream = StreamViews(data, views, seed=0)
    position: list[Any] = [itertools.count(), iter(stream)]

    def by_index(path: str) -> object:
        sample_id = next(position[0]) % len(indexed)
        image, _ = indexed[sample_id]
        return views(image, 0, sample_id)

    def streamed(path: str) -> object:
        try:
            return next(position[1])
        except StopIteration:
            position[1] = iter(stream)
            return next(position[1])

    return {"local shards, indexed": by_index, "local shards, stream": streamed}


def device_samples_per_s(paths: list[str], size: int, device: str, repeats: int) -> float:
    # What the loader workers hand the device in this mode (augment.device_source_size=256).
    aug = official_augment(size, device_source_size=256)
    views = device_views(aug).to(device)
    stored = torch.stack([same_size(aug)(read_rgb(p)) for p in paths])
    batch = stored[torch.arange(256) % len(stored)].to(device)
    rates = []
    for _ in range(repeats + 1):
        torch.cuda.synchronize()
        start = time.perf_counter()
        views[0](batch), views[1](batch)
        torch.cuda.synchronize()
        rates.append(len(batch) / (time.perf_counter() - start))
    return statistics.median(rates[1:])


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--root", type=Path, default=None)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    return parser


def main() -> None:
    args = parser().parse_args()
    torch.set_num_threads(1)  # one loader worker's share of the machine
    random.seed(0), np.random.seed(0), torch.manual_seed(0)

    with tempfile.TemporaryDirectory() as tmp:
        paths = image_paths(args.root, args.images) if args.root else write_photos(Path(tmp), args.images)
        pipelines = {
            "official (Pillow, torchvision v1)": official_pipeline(args.size),
            "ours (OpenCV, uint8 out)": our_pipeline(args.size, normalize_on_cpu=False),
            "ours + normalise on CPU": our_pipeline(args.size, normalize_on_cpu=True),
        }
        readers = shard_readers(paths, Path(tmp) / "sharded", args.size)
        every = {**pipelines, **readers}
        for pipeline in every.values():  # warm-up: imports, lookup tables, page cache
            pipeline(paths[0])
        rates: dict[str, list[float]] = {name: [] for name in every}
        for _ in range(args.repeats):  # interleaved, so that machine noise falls on every row alike
            for name, pipeline in every.items():
                rates[name].append(samples_per_s(pipeline, paths))
        results = {name: statistics.median(rates[name]) for name in pipelines}
        # The folder's row is our pipeline's above: the same reader, timed once.
        read_from = {"folder of image files": results["ours (OpenCV, uint8 out)"],
                     **{name: statistics.median(rates[name]) for name in readers}}
        if args.device == "cuda":
            results["on-device (kornia, batch 256; whole GPU)"] = device_samples_per_s(
                paths, args.size, args.device, args.repeats)

    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"two-view samples/s per worker (1 thread), {len(paths)} images, {args.size} px crops, "
          f"torch {torch.__version__}, {device}")
    baseline = results["official (Pillow, torchvision v1)"]
    print("| pipeline | samples/s | × official |\n|---|---:|---:|")
    for name, rate in results.items():
        print(f"| {name} | {rate:.1f} | {rate / baseline:.2f} |")
    print("\nours, by where the images are read from (the same images, decoder and views):")
    print("| read from | samples/s | × folder |\n|---|---:|---:|")
    for name, rate in read_from.items():
        print(f"| {name} | {rate:.1f} | {rate / read_from['folder of image files']:.2f} |")


if __name__ == "__main__":
    main()
