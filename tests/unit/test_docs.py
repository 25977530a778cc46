"""The README stays short and points into the docs; what the docs pages name is there.

The docs' command lines: tests/unit/test_doc_commands.py; the site's build with warnings as errors:
tests/integration/test_docs.py."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))


def test_the_readme_is_at_most_8_kb() -> None:
    assert README.stat().st_size <= 8 * 1024, README.stat().st_size


def test_the_readme_gives_the_set_up_commands_that_ci_runs() -> None:
    readme, ci = README.read_text(), (ROOT / ".ci" / "run").read_text()
    assert '```bash\npython3 -m venv .venv && . .venv/bin/activate && pip install -e ".[dev]" && python train.py\n```' \
        in readme
    assert "```bash\n. .venv/bin/activate && python -m pytest\n```" in readme
    for line in ("python3 -m venv .venv", ". .venv/bin/activate", 'pip install -e ".[dev]"', "python -m pytest"):
        assert line in ci.splitlines(), line


def test_the_readme_links_to_every_page_and_each_link_resolves() -> None:
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", README.read_text())
    assert {link for link in links if not (ROOT / link).is_file()} == set()
    assert {f"docs/{page.name}" for page in PAGES} <= set(links)


def test_every_repository_path_the_pages_name_exists() -> None:
    """A path in backticks (`tests/...`, `vicreg_lightning/...`, `conf/...`) is one a reader can open."""
    named = set()
    for page in [*PAGES, README]:
        for path in re.findall(r"`((?:tests|vicreg_lightning|conf|benchmarks|scripts|notebooks|examples|docs)/[^`\s<>*{}]+)`",
                               page.read_text()):
            named.add(path.rstrip("/"))
    missing = {path for path in named if not (ROOT / path).exists() and not path.startswith("docs/_build")}
    assert missing == set(), sorted(missing)
