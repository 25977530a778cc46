"""Evaluate pretrained weights: ``python eval.py weights=<checkpoint | run dir | export dir> [eval=...]``."""

import hydra
from omegaconf import DictConfig

from vicreg_lightning.cli import exit_on_user_error, quiet_lightning_console, user_errors_exit


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    with user_errors_exit():
        from vicreg_lightning.evaluate import run

        quiet_lightning_console()
        run(cfg)


if __name__ == "__main__":
    exit_on_user_error(main)
