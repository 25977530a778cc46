"""The config of ``train.py``: its schema (:mod:`.schema`), its checks (:mod:`.checks`) and
composing it outside a Hydra job (:mod:`.compose`).

The schema says what each key is (its type); the YAML under ``conf/`` is the only place a value is
written. Hydra checks every key and type as it composes; :func:`check_config` then checks the whole
composed config: the root keys, no value left out (``???``), and each section's values
(:func:`check_sections`, also used by eval and the report), naming the key and what it should be.

Importing this package registers the schemas with Hydra's ConfigStore (the presets of ``conf/``
start from them), and imports no torch: a bad command line fails in seconds.
"""

from vicreg_lightning.config.checks import (
    CHECKS,
    check_config,
    check_recipe,
    check_sections,
    check_trainer_arguments,
    instantiate_entry,
    merge_into,
    require_value,
)
from vicreg_lightning.config.compose import compose_train_config, preset
from vicreg_lightning.config.schema import (
    SCHEMAS,
    AugmentConfig,
    DataConfig,
    LossConfig,
    ModelConfig,
    OptimConfig,
    PathsConfig,
    TrainConfig,
    ViewConfig,
    register_schemas,
)

__all__ = [
    "CHECKS", "SCHEMAS", "AugmentConfig", "DataConfig", "LossConfig", "ModelConfig", "OptimConfig", "PathsConfig",
    "TrainConfig", "ViewConfig", "check_config", "check_recipe", "check_sections", "check_trainer_arguments",
    "compose_train_config", "instantiate_entry", "merge_into", "preset", "register_schemas", "require_value",
]

# On import, as Hydra registers structured configs: the presets of conf/ start from these.
register_schemas()
