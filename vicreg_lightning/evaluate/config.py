"""The evaluation's config schema (``conf/eval.yaml``, ``conf/eval/``) and its checks, and the
data sections an evaluation reads from the training run. As in :mod:`vicreg_lightning.config`,
the schema has no defaults: the YAML holds every value."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

from vicreg_lightning.config import PathsConfig, check_sections, merge_into, require_value
from vicreg_lightning.errors import ConfigError


@dataclass
class LinearEvalConfig:
    """``conf/eval/linear.yaml``: the paper's linear protocol."""

    epochs: int = MISSING
    batch_size: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    momentum: float = MISSING
    init_std: float = MISSING
    train_augment: bool = MISSING


@dataclass
class KNNEvalConfig:
    """``conf/eval/knn.yaml``: k-NN with temperature-weighted votes."""

    k: list[int] = MISSING
    temperature: float = MISSING
    embeddings: bool = MISSING  # also on the expander's output (eval/knn<k>_embed_acc1)


@dataclass
class SemiSupervisedSplit:
    percent: float = MISSING
    encoder_lr: float = MISSING
    head_lr: float = MISSING


@dataclass
class SemiSupervisedConfig:
    """``conf/eval/semi_supervised.yaml``: fine-tuning on labelled subsets, one per entry of
    ``splits`` (its key is the metric prefix: ``semi1`` → ``eval/semi1_acc1``)."""

    splits: dict[str, SemiSupervisedSplit] = MISSING
    epochs: int = MISSING
    batch_size: int = MISSING
    weight_decay: float = MISSING
    momentum: float = MISSING
    subset_seed: int = MISSING


# The options of the ``eval`` group, each a protocol: its key in ``eval`` and its schema.
PROTOCOLS: dict[str, type] = {
    "linear": LinearEvalConfig, "knn": KNNEvalConfig, "semi_supervised": SemiSupervisedConfig,
}


@dataclass
class EvalConfig:
    """``conf/eval.yaml``. ``eval`` holds the chosen protocols (:data:`PROTOCOLS`); ``data`` and
    ``augment``, null for the training run's, else merged over the run's and checked as
    ``train.py`` checks them (:func:`resolve_data`)."""

    weights: str = MISSING
    arch: Optional[str] = MISSING  # the backbone expected of the weights; None: whichever they hold
    eval: dict[str, Any] = MISSING
    data: Optional[dict[str, Any]] = MISSING
    augment: Optional[dict[str, Any]] = MISSING
    paths: PathsConfig = MISSING
    task_name: str = MISSING
    seed: int = MISSING
    device: str = MISSING
    inference_batch_size: int = MISSING


def check_eval_config(cfg: DictConfig) -> DictConfig:
    """The composed ``conf/eval.yaml`` merged into :class:`EvalConfig` and checked, or a
    :class:`ConfigError` naming the key. Its ``eval`` has every protocol's key: the checked
    section of a chosen one, None for the others."""
    if OmegaConf.is_missing(cfg, "weights"):
        raise ConfigError("weights: missing; pass weights=<checkpoint .ckpt, run directory or export folder>")
    if not cfg.get("eval"):
        raise ConfigError("eval: no protocol; choose eval=linear, knn, semi_supervised, all or a list: eval=[linear,knn]")
    typed = merge_into(EvalConfig, cfg)
    unknown = [name for name in typed.eval if name not in PROTOCOLS]
    if unknown:
        raise ConfigError(f"eval.{unknown[0]}: no such protocol; choose among {', '.join(PROTOCOLS)}")
    protocols = {name: merge_into(schema, typed.eval[name], prefix=f"eval.{name}") if name in typed.eval else None
                 for name, schema in PROTOCOLS.items()}
    if protocols["linear"] is not None:
        linear = protocols["linear"]
        _check_sgd("eval.linear", linear.epochs, linear.batch_size, linear.momentum, linear.weight_decay)
        require_value(linear.lr > 0, "eval.linear.lr", linear.lr, "a learning rate > 0")
        require_value(linear.init_std >= 0, "eval.linear.init_std", linear.init_std, "a standard deviation >= 0")
    if protocols["knn"] is not None:
        knn = protocols["knn"]
        require_value(len(knn.k) > 0 and all(k >= 1 for k in knn.k), "eval.knn.k", list(knn.k),
                      "a list of neighbour counts >= 1, e.g. [20,200]")
        require_value(knn.temperature > 0, "eval.knn.temperature", knn.temperature, "a temperature > 0")
    if protocols["semi_supervised"] is not None:
        semi = protocols["semi_supervised"]
        _check_sgd("eval.semi_supervised", semi.epochs, semi.batch_size, semi.momentum, semi.weight_decay)
        require_value(len(semi.splits) > 0, "eval.semi_supervised.splits", dict(semi.splits), "at least one split")
        for name, split in semi.splits.items():
            key = f"eval.semi_supervised.splits.{name}"
            require_value(0 < split.percent <= 100, f"{key}.percent", split.percent, "a percentage in (0, 100]")
            require_value(split.encoder_lr >= 0 and split.head_lr > 0, f"{key}.head_lr", split.head_lr,
                          "learning rates > 0 (encoder_lr >= 0)")
    require_value(typed.inference_batch_size >= 1, "inference_batch_size", typed.inference_batch_size, "an integer >= 1")
    typed.eval = protocols
    return typed


def _check_sgd(section: str, epochs: int, batch_size: int, momentum: float, weight_decay: float) -> None:
    require_value(epochs >= 1, f"{section}.epochs", epochs, "an integer >= 1")
    require_value(batch_size >= 2, f"{section}.batch_size", batch_size, "an integer >= 2")
    require_value(0 <= momentum < 1, f"{section}.momentum", momentum, "a number in [0, 1)")
    require_value(weight_decay >= 0, f"{section}.weight_decay", weight_decay, "a number >= 0")


def resolve_data(cfg: DictConfig, info: dict[str, Any]) -> tuple[DictConfig, DictConfig]:
    """The ``data`` and ``augment`` sections to evaluate on: the training run's (``info``, from the
    export's ``vicreg.json`` or the checkpoint's run directory), with what ``cfg`` sets merged over
    them (``data=<option>`` a whole preset, ``+data.root=...`` one key), checked as ``train.py``
    checks them."""
    sections = {}
    for name in ("data", "augment"):
        trained, asked = info.get(name), cfg.get(name)
        asked = OmegaConf.to_container(asked, resolve=True) if asked is not None else {}
        if trained is None and not asked:
            raise ConfigError(
                f"weights={cfg.weights!r}: the training run's {name} is unknown (no .hydra/config.yaml in its run "
                f"directory, no '{name}' in vicreg.json); choose one with {name}=<option>"
            )
        sections[name] = OmegaConf.merge(trained or {}, asked)
    return check_run_sections(sections["data"], sections["augment"])


def check_run_sections(data: Any, augment: Any) -> tuple[DictConfig, DictConfig]:
    """A training run's ``data`` and ``augment`` checked as ``train.py`` checks them, keys it lacks
    (a run older than them) taking the values ``data=<its data set>`` gives them today."""
    from vicreg_lightning.config import compose_train_config
    from vicreg_lightning.data.catalog import DATASETS

    name = OmegaConf.select(OmegaConf.create(data), "name") if data else None
    if name in DATASETS:
        current = compose_train_config("~experiment", f"data={name}")
        data, augment = OmegaConf.merge(current.data, data), OmegaConf.merge(current.augment, augment or {})
    return check_sections(data=data, augment=augment)
