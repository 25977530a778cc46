"""The layout map of the contributing page (docs/contributing.md) is the tree: every module and folder
it names exists, and every module of the package is named in it. No module is longer than ~400 lines."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
LAYOUT_PAGE = ROOT / "docs" / "contributing.md"
PACKAGE = ROOT / "vicreg_lightning"


def layout_map() -> set[str]:
    """The paths of the layout block of the contributing page, nesting resolved (two spaces per level)."""
    block = re.search(r"## Layout\n\n```text\n(.*?)```", LAYOUT_PAGE.read_text(), re.S).group(1)
    paths, parents = set(), []
    for line in block.splitlines():
        depth = (len(line) - len(line.lstrip(" "))) // 2
        names = line.strip().split("  ")[0].strip()
        parents = parents[:depth]
        for name in names.split(", "):
            paths.add("/".join([*parents, name.rstrip("/")]))
        if names.endswith("/"):
            parents.append(names.rstrip("/"))
    return paths


def test_the_layout_map_matches_the_tree():
    named = layout_map()
    assert not {path for path in named if not (ROOT / path).exists()}, "named in the layout map but missing"
    modules = {str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
               if p.name != "__init__.py" and "conf" not in p.parts}
    assert modules - named == set(), "modules the layout map does not name"
    folders = {str(p.relative_to(ROOT)) for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders - named == set()


def test_no_module_is_longer_than_about_400_lines():
    lengths = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {path: n for path, n in lengths.items() if n > 420} == {}
