"""The report's figures are drawn with matplotlib: the Agg backend (no display), imported on first
use (it takes a second), and one way to save a figure. Each section draws its own
(``health``, ``probes``, ``invariance``, ``groups``, ``thresholds`` in :mod:`vicreg_lightning.report`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path) -> None:
    """Write ``fig`` as a PNG at the report's resolution, and free it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
