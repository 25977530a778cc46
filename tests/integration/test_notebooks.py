"""The notebooks run top to bottom (on a few training steps), so they never rot."""

from __future__ import annotations

import nbformat
import pytest
from nbclient import NotebookClient

from tests.runs import ROOT

NOTEBOOKS = ROOT / "notebooks"


@pytest.mark.parametrize("name", ["quickstart", "sweep_analysis"])
def test_notebook_executes(name, tmp_path, monkeypatch):
    monkeypatch.setenv("VICREG_NOTEBOOK_SMOKE", "1")
    monkeypatch.setenv("VICREG_NOTEBOOK_OUT", str(tmp_path))
    monkeypatch.delenv("VICREG_SWEEP_DIR", raising=False)
    notebook = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
                   ).execute()
    errors = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
              if out.output_type == "error"]
    assert not errors
    images = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.outputs
              if "image/png" in out.get("data", {})]
    assert images, "the notebook drew no figure"
