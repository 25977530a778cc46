"""``python -m vicreg_lightning.report``: the ``vicreg-report`` command (:func:`vicreg_lightning.cli.report`)."""

import sys

from vicreg_lightning.cli import report

if __name__ == "__main__":
    sys.exit(report())
