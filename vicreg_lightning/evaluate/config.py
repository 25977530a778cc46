"""The evaluation's config schema (``conf/eval.yaml``, ``conf/eval/``) and its checks, and the
data sections an evaluation reads from the training run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from vicreg_lightning.config import PathsConfig, check_data_sections, require_value
from vicreg_lightning.errors import ConfigError


@dataclass
class LinearEvalConfig:
    """``conf/eval/linear.yaml``: the paper's linear protocol."""

    epochs: int = 100
    batch_size: int = 256
    lr: float = 0.02
    weight_decay: float = 1e-6
    momentum: float = 0.9
    init_std: float = 0.01
    train_augment: bool = False


@dataclass
class KNNEvalConfig:
    """``conf/eval/knn.yaml``: k-NN with temperature-weighted votes."""

    k: list[int] = field(default_factory=lambda: [20, 200])
    temperature: float = 0.07
    embeddings: bool = False  # also on the expander's output (eval/knn<k>_embed_acc1)


@dataclass
class SemiSupervisedSplit:
    percent: float = 1.0
    encoder_lr: float = 0.03
    head_lr: float = 0.08


@dataclass
class SemiSupervisedConfig:
    """``conf/eval/semi_supervised.yaml``: fine-tuning on labelled subsets, one per entry of
    ``splits`` (its key is the metric prefix: ``semi1`` → ``eval/semi1_acc1``)."""

    splits: dict[str, SemiSupervisedSplit] = field(default_factory=dict)
    epochs: int = 20
    batch_size: int = 256
    weight_decay: float = 0.0
    momentum: float = 0.9
    subset_seed: int = 0


@dataclass
class ProtocolsConfig:
    """The ``eval`` group: each protocol present runs."""

    linear: Optional[LinearEvalConfig] = None
    knn: Optional[KNNEvalConfig] = None
    semi_supervised: Optional[SemiSupervisedConfig] = None


@dataclass
class EvalConfig:
    weights: str = MISSING
    arch: Optional[str] = None  # the backbone expected of the weights; None: whichever they hold
    eval: ProtocolsConfig = field(default_factory=ProtocolsConfig)
    # None: the training run's. Checked as train.py checks them, once merged over the run's.
    data: Optional[dict[str, Any]] = None
    augment: Optional[dict[str, Any]] = None
    # What a data preset sets for *training* (data=digits picks a model and a schedule): unused here.
    model: Optional[dict[str, Any]] = None
    optim: Optional[dict[str, Any]] = None
    trainer: Optional[dict[str, Any]] = None
    paths: PathsConfig = field(default_factory=PathsConfig)
    task_name: str = "eval"
    seed: int = 0
    device: str = "auto"
    inference_batch_size: int = 256  # images per forward pass when computing features


def check_eval_config(cfg: DictConfig) -> DictConfig:
    """The composed ``conf/eval.yaml`` merged into :class:`EvalConfig`, or a :class:`ConfigError`
    naming the key."""
    if OmegaConf.is_missing(cfg, "weights"):
        raise ConfigError("weights: missing; pass weights=<checkpoint .ckpt, run directory or export folder>")
    try:
        typed = OmegaConf.merge(OmegaConf.structured(EvalConfig), cfg)
    except ConfigKeyError as e:
        raise ConfigError(f"unknown config key '{e.full_key}'") from None
    except ValidationError as e:
        raise ConfigError(f"{e.full_key}: {e.msg.splitlines()[0]}") from None
    except OmegaConfBaseException as e:
        raise ConfigError(f"{getattr(e, 'full_key', '') or 'config'}: {str(e).splitlines()[0]}") from None
    protocols = typed.eval
    if protocols.linear is None and protocols.knn is None and protocols.semi_supervised is None:
        raise ConfigError("eval: no protocol; choose eval=linear, knn, semi_supervised, all or a list: eval=[linear,knn]")
    if protocols.linear is not None:
        linear = protocols.linear
        _check_sgd("eval.linear", linear.epochs, linear.batch_size, linear.momentum, linear.weight_decay)
        require_value(linear.lr > 0, "eval.linear.lr", linear.lr, "a learning rate > 0")
        require_value(linear.init_std >= 0, "eval.linear.init_std", linear.init_std, "a standard deviation >= 0")
    if protocols.knn is not None:
        knn = protocols.knn
        require_value(len(knn.k) > 0 and all(k >= 1 for k in knn.k), "eval.knn.k", list(knn.k),
                 "a list of neighbour counts >= 1, e.g. [20,200]")
        require_value(knn.temperature > 0, "eval.knn.temperature", knn.temperature, "a temperature > 0")
    if protocols.semi_supervised is not None:
        semi = protocols.semi_supervised
        _check_sgd("eval.semi_supervised", semi.epochs, semi.batch_size, semi.momentum, semi.weight_decay)
        require_value(len(semi.splits) > 0, "eval.semi_supervised.splits", dict(semi.splits), "at least one split")
        for name, split in semi.splits.items():
            key = f"eval.semi_supervised.splits.{name}"
            require_value(0 < split.percent <= 100, f"{key}.percent", split.percent, "a percentage in (0, 100]")
            require_value(split.encoder_lr >= 0 and split.head_lr > 0, f"{key}.head_lr", split.head_lr,
                     "learning rates > 0 (encoder_lr >= 0)")
    require_value(typed.inference_batch_size >= 1, "inference_batch_size", typed.inference_batch_size, "an integer >= 1")
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
    return check_data_sections(sections["data"], sections["augment"])
