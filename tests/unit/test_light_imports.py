"""A bad command line fails in about a second: composing and checking a config (``vicreg_lightning.config``,
``vicreg_lightning.cli``) loads no torch, which takes seconds to import. Checked in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import {modules}
print(",".join(sorted(name for name in ("torch", "torchvision", "lightning") if name in sys.modules)))
"""


def heavy_modules_loaded_by(*modules: str) -> str:
    """The heavy packages that importing ``modules`` loads, comma-separated."""
    proc = subprocess.run([sys.executable, "-c", PROBE.format(modules=", ".join(modules))], capture_output=True,
                          text=True, timeout=120, check=True)
    return proc.stdout.strip()


def test_the_config_and_the_command_line_load_no_torch():
    assert heavy_modules_loaded_by("vicreg_lightning.config", "vicreg_lightning.cli", "vicreg_lightning.choices") == ""


def test_the_probe_sees_torch_where_it_is_loaded():
    """Negative control: the loss is torch."""
    assert heavy_modules_loaded_by("vicreg_lightning.loss") == "torch"
