"""Evaluate pretrained weights: ``python eval.py weights=<checkpoint | run dir | export dir> [eval=...]``
(the same as the ``vicreg-eval`` command)."""

from vicreg_lightning.cli import evaluate

if __name__ == "__main__":
    evaluate()
