"""How tests start runs and build configs: ``train.py`` in a subprocess, the composed config
in-process, small runs' overrides. Shared by the test modules (none of which imports another)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from vicreg_lightning.config import AugmentConfig, DataConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# A run in seconds: 4 steps of 32 images, a narrow expander, no loader processes. The generic LARS
# preset (lr 0.0375 at batch 32), not digits' base_lr 3.2: the DDP test's tolerance is for float32
# sums in another order, and steps ten times larger grew that difference to 5e-4 in 4 steps.
TINY = [
    "data.batch_size=32", "model.expander=64-64", "data.num_workers=0", "trainer.enable_progress_bar=false",
    "trainer.max_epochs=1", "trainer.limit_train_batches=4", "optim=lars", "optim.warmup_epochs=0",
]


def train(*overrides: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python train.py <overrides>`` in a subprocess, with ``env`` added to the environment."""
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})})


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    """The state dict of ``<run_dir>/checkpoints/last.ckpt``."""
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def compose_train(*overrides: str):
    """``conf/train.yaml`` composed with ``overrides``, as ``train.py`` composes it (not checked)."""
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def shrink(root: Path, output_dir: Path) -> list[str]:
    """Overrides that keep a preset's architecture and recipe but make it run in seconds."""
    return [
        f"data.root={root}", "data.download=false", "data.batch_size=8", "data.num_workers=0",
        "augment.size=32", "augment.val_resize=36", "augment.blur_kernel_size=3", "model.expander=64-32",
        "trainer.max_epochs=1", "optim.warmup_epochs=0", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
        "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
        f"paths.output_dir={output_dir}",
    ]


def configs(name: str, root: str = "", size: int = 16, batch_size: int = 4, **data):
    """``(data, augment)`` sections for a data module built in-process, without loader workers."""
    data_cfg = OmegaConf.structured(DataConfig(name=name, root=root, batch_size=batch_size, **{"num_workers": 0, **data}))
    aug = OmegaConf.structured(AugmentConfig(size=size, val_resize=size, blur_kernel_size=3))
    return data_cfg, aug
