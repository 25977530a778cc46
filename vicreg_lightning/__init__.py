"""vicreg-lightning: VICReg self-supervised pretraining with PyTorch Lightning and Hydra."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The public classes are imported on first use: the command line checks a config with the light
# submodules (config, errors, cli) and fails in seconds, before torch/Lightning load.
_EXPORTS = {
    "VICRegLoss": "vicreg_lightning.loss",
    "VICRegLossOutput": "vicreg_lightning.loss",
    "VICRegModule": "vicreg_lightning.module",
    "VICRegDataModule": "vicreg_lightning.data.datamodule",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'vicreg_lightning' has no attribute {name!r}")
