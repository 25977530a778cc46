"""Sphinx configuration of the vicreg-lightning documentation: Markdown pages (MyST), the API
reference from the package's docstrings (autodoc), the furo theme.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (``tests/integration/test_docs.py`` builds it
the same way, warnings as errors)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the package, also from a checkout that is not installed

project = "vicreg-lightning"
author = "vicreg-lightning contributors"
copyright = "vicreg-lightning contributors"

extensions = [
    "myst_parser",            # pages in Markdown, with roles ({class}`...`) and directives
    "sphinx.ext.autodoc",     # the API reference and the method pages: the docstrings themselves
    "sphinx.ext.napoleon",    # the docstrings' "Args:" sections (Google style)
    "sphinx.ext.viewcode",    # a link from each documented object to its source
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# MyST: ::: fences for directives that hold Markdown, $...$ left alone (the pages quote formulas
# in code), definition lists for reference pages.
myst_enable_extensions = ["colon_fence", "deflist", "attrs_inline"]
myst_heading_anchors = 3

# Autodoc: members in source order, the signature's types in the description, not in the
# signature line (some are long unions).
autodoc_member_order = "bysource"
# Overrides of torch and Lightning methods without a docstring of their own stay bare: the
# parents' docstrings are written for their own docs (their labels, roles and directives).
autodoc_inherit_docstrings = False
autodoc_typehints = "description"
autodoc_default_options = {"members": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = "vicreg-lightning"
html_static_path = ["_static"]
html_css_files = ["tables.css"]
