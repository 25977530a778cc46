"""Pretrain an encoder with VICReg: ``python train.py [group=option ...] [key=value ...]`` (the same as
the ``vicreg-train`` command; the configs are in ``vicreg_lightning/conf``)."""

from vicreg_lightning.cli import train

if __name__ == "__main__":
    train()
