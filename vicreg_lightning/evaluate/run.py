"""One evaluation: ``run(cfg) -> metrics`` (what ``vicreg-eval`` and ``eval.py`` call)."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from vicreg_lightning.data.augment import eval_transform
from vicreg_lightning.data.datamodule import default_num_workers
from vicreg_lightning.data.datasets import Transformed, build_datasets
from vicreg_lightning.errors import ConfigError, RunDirRefused, UserError
from vicreg_lightning.evaluate.config import check_eval_config, resolve_data
from vicreg_lightning.evaluate.data import labelled_part, train_transform
from vicreg_lightning.evaluate.protocols import feature_batches, frozen_backbone_batches, knn_eval, linear_eval, one_cpu_thread, semi_supervised_eval
from vicreg_lightning.export import load_encoder
from vicreg_lightning.features import extract_features, make_loader
from vicreg_lightning.run_dir import (METRICS_FILE, held, recorded_task, save_job_config, saved_checkpoints,
                                      write_metrics)

log = logging.getLogger(__name__)


def pick_device(name: str, key: str = "device") -> torch.device:
    """The device named by the user's ``key`` (``device=...``, ``--device ...``); ``auto``: CUDA,
    else Apple's MPS, else the CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"{key}={name!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"{key}={name!r}: no CUDA device here; use {key}=cpu or {key}=auto")
    return device


def run(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``cfg.weights`` with every protocol of ``cfg.eval``; write ``metrics.json`` in
    ``paths.output_dir`` and return the metrics (flat ``{"eval/linear_acc1": ..., ...}``)."""
    composed = cfg
    cfg = check_eval_config(cfg)
    output_dir = Path(cfg.paths.output_dir)
    with held(output_dir):
        shown = f"hydra.run.dir={str(output_dir)!r}"
        if (output_dir / METRICS_FILE).exists():
            raise RunDirRefused(f"{shown} already holds a finished evaluation; choose a new hydra.run.dir")
        other = recorded_task(output_dir)
        if saved_checkpoints(output_dir) or other not in (None, cfg.task_name):
            raise RunDirRefused(f"{shown} holds a {other or 'training'} run; evaluate into a new hydra.run.dir")
        save_job_config(composed)
        return _evaluate(cfg, output_dir)


def _evaluate(cfg: DictConfig, output_dir: Path) -> dict[str, float]:
    """:func:`run` once the output directory is held and checked."""
    device = pick_device(cfg.device)
    try:
        backbone, expander, info = load_encoder(cfg.weights, arch=cfg.arch)
    except UserError as e:
        raise UserError(f"weights={e}") from None
    protocols = cfg.eval
    with_embeddings = protocols.knn is not None and protocols.knn.embeddings
    if with_embeddings and expander is None:
        raise UserError(f"weights={cfg.weights!r}: holds no expander.pt; eval.knn.embeddings=true needs one")
    data, augment = resolve_data(cfg, info)
    workers = data.num_workers if data.num_workers >= 0 else default_num_workers()
    metrics: dict[str, float] = {}

    started = time.perf_counter()
    train_raw, val_raw, num_classes = build_datasets(data)
    train_set, train_labels = labelled_part(train_raw, "train", data.name)
    val_set, val_labels = labelled_part(val_raw, "validation", data.name)
    log.info("evaluating %s (%s, %d-d features) on %s: %d labelled training and %d validation images, %d classes",
             cfg.weights, info["arch"], info["feature_dim"], data.name, len(train_labels), len(val_labels), num_classes)
    backbone.to(device)
    expander = expander.to(device) if with_embeddings else None
    eval_images = eval_transform(augment)
    val = extract_features(backbone, expander, make_loader(Transformed(val_set, eval_images),
                                                           cfg.inference_batch_size, workers), device)
    linear_on_features = protocols.linear is not None and not protocols.linear.train_augment
    if protocols.knn is not None or linear_on_features:
        train = extract_features(backbone, expander, make_loader(Transformed(train_set, eval_images),
                                                                 cfg.inference_batch_size, workers), device)
    metrics["eval/features_time_s"] = time.perf_counter() - started

    if protocols.knn is not None:
        started = time.perf_counter()
        spaces = {"": "features"} | ({"_embed": "embeddings"} if with_embeddings else {})
        for suffix, space in spaces.items():
            results = knn_eval(protocols.knn, (getattr(train, space), train.labels), (getattr(val, space), val.labels),
                               num_classes, device)
            for k, result in results.items():
                metrics |= {f"eval/knn{k}{suffix}_{name}": value for name, value in result.items()}
        metrics["eval/knn_time_s"] = time.perf_counter() - started

    if protocols.linear is not None:
        started = time.perf_counter()
        linear = protocols.linear
        if linear_on_features:
            batches = feature_batches(train.features, train.labels, linear.batch_size, cfg.seed)
        else:
            augmented = Transformed(train_set, train_transform(augment))
            batches = frozen_backbone_batches(
                backbone, make_loader(augmented, linear.batch_size, workers, shuffle=True, seed=cfg.seed), device)
        with one_cpu_thread(device) if linear_on_features else contextlib.nullcontext():
            result = linear_eval(linear, batches, val, num_classes, device, cfg.seed)
        metrics |= {f"eval/linear_{name}": value for name, value in result.items()}
        metrics["eval/linear_time_s"] = time.perf_counter() - started

    if protocols.semi_supervised is not None:
        started = time.perf_counter()
        val_loader = make_loader(Transformed(val_set, eval_images), cfg.inference_batch_size, workers)
        results = semi_supervised_eval(
            protocols.semi_supervised, backbone, Transformed(train_set, train_transform(augment)), train_labels,
            val_loader, num_classes, info["feature_dim"], workers, device, cfg.seed,
        )
        for split, result in results.items():
            metrics |= {f"eval/{split}_{name}": value for name, value in result.items()}
        metrics["eval/semi_supervised_time_s"] = time.perf_counter() - started

    output_dir.mkdir(parents=True, exist_ok=True)
    write_metrics(output_dir / METRICS_FILE, metrics)
    summary = ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k.endswith("_acc1"))
    print(f"Eval metrics ({output_dir / METRICS_FILE}): {summary}")
    return metrics
