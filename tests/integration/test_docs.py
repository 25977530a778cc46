"""The docs site builds with warnings as errors: what ``sphinx-build -W -b html docs
docs/_build/html`` (the README's command) does, in this process, into a temporary folder. Autodoc
imports the package, so a docstring that does not parse, a broken cross-reference, a page missing
from the table of contents or a bad include fails here."""

from __future__ import annotations

from pathlib import Path

import pytest
from sphinx.cmd.build import build_main

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())


# Sphinx's deprecations of its own API, raised by its extensions (napoleon, myst-parser) hundreds of
# times a build: not the docs' warnings, which -W makes errors.
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::PendingDeprecationWarning")
def test_the_docs_build_without_a_warning(tmp_path: Path) -> None:
    warnings = tmp_path / "warnings.txt"
    code = build_main(["-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
                       "-w", str(warnings), str(ROOT / "docs"), str(tmp_path / "html")])
    assert code == 0, warnings.read_text()
    assert warnings.read_text() == ""
    for page in ("index", "getting-started", "configuration", "report", "report-json", "method", "api"):
        assert (tmp_path / "html" / f"{page}.html").is_file(), page
    # The method page shows the loss's own docstring (autodoc), not a copy.
    method = (tmp_path / "html" / "method.html").read_text()
    assert "class vicreg_lightning.loss.VICRegLoss" in method.replace("<span class=\"pre\">", "").replace("</span>", "") \
        or 'id="vicreg_lightning.loss.VICRegLoss"' in method
