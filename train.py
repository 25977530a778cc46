"""Pretrain an encoder with VICReg: ``python train.py [group=option ...] [key=value ...]``."""

import hydra
from omegaconf import DictConfig

from vicreg_lightning.cli import exit_on_user_error, quiet_lightning_console, user_errors_exit


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with user_errors_exit():
        # Config and data are checked before torchvision and Lightning load: bad input fails fast.
        from vicreg_lightning.config import check_config
        from vicreg_lightning.data.catalog import inspect_data

        inspect_data(check_config(cfg).data)
        from vicreg_lightning.train import run

        quiet_lightning_console()
        # The config as composed: the run checks it again, and records it as given.
        metrics = run(cfg)
    return metrics.get(cfg.optimized_metric)


if __name__ == "__main__":
    exit_on_user_error(main)
