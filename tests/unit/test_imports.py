"""The package's imports point one way: no cycle among the imports a module runs when it is loaded,
and no library module imports the command line (:mod:`vicreg_lightning.cli`), which sits on top.

The graph is read from the source (``ast``), not by importing: every ``import`` and ``from ...
import`` of a ``vicreg_lightning`` module, relative ones resolved, ``from package import
submodule`` taken as the submodule. Imports inside functions are deferred (they run when the
function is called) and count for the command-line rule but not as load-time edges; so do those under
``if TYPE_CHECKING:``. A ``__main__.py`` and an ``if __name__ == "__main__":`` block are the
``python -m`` entry points: they may call the command line.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = "vicreg_lightning"
CLI = f"{PACKAGE}.cli"


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module
    at_load: bool  # run when the source is loaded (not in a function, TYPE_CHECKING or __main__ block)
    entry_point: bool  # in a __main__.py or an `if __name__ == "__main__":` block


def module_names(root: Path, package: str = PACKAGE) -> dict[str, Path]:
    """Every module of ``package`` under ``root``, by dotted name (a package by its ``__init__.py``)."""
    names = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_main_guard(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Compare) and isinstance(test.left, ast.Name) and test.left.id == "__name__"
            and any(isinstance(c, ast.Constant) and c.value == "__main__" for c in test.comparators))


def _is_type_checking(node: ast.If) -> bool:
    return (isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING") or (
        isinstance(node.test, ast.Attribute) and node.test.attr == "TYPE_CHECKING")


def _imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join([*base, *([node.module] if node.module else [])])

    def visit(node: ast.AST, at_load: bool, entry_point: bool) -> None:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            at_load = False
        elif isinstance(node, ast.If) and (_is_main_guard(node) or _is_type_checking(node)):
            entry_point = entry_point or _is_main_guard(node)
            for child in node.body:
                visit(child, False, entry_point)
            for child in node.orelse:
                visit(child, at_load, entry_point)
            return
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(node)
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            if target in modules and target != name:
                found.append(Import(name, target, at_load, entry_point))
        for child in ast.iter_child_nodes(node):
            visit(child, at_load, entry_point)

    visit(ast.parse(path.read_text(), str(path)), True, path.name == "__main__.py")
    return found


@functools.cache
def package_imports(root: Path = ROOT) -> tuple[Import, ...]:
    modules = module_names(root)
    return tuple(imp for name, path in modules.items() for imp in _imports_of(name, path, modules))


def load_time_cycles(imports: tuple[Import, ...]) -> list[list[str]]:
    """The cycles (strongly connected components of more than one module, or a module importing
    itself) of the imports that run at load time."""
    graph: dict[str, set[str]] = {}
    for imp in imports:
        if imp.at_load:
            graph.setdefault(imp.source, set()).add(imp.target)
            graph.setdefault(imp.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return cycles


def library_imports_of_cli(imports: tuple[Import, ...]) -> list[str]:
    return sorted({f"{imp.source} -> {imp.target}" for imp in imports
                   if imp.target == CLI and imp.source != CLI and not imp.entry_point})


def test_no_import_cycle_at_load_time():
    imports = package_imports()
    # The walk reads the whole package: a load-time edge deep in it, and a deferred one.
    assert Import(f"{PACKAGE}.report.write", f"{PACKAGE}.report.health", True, False) in imports
    assert Import(f"{PACKAGE}.cli", f"{PACKAGE}.train", False, False) in imports
    assert load_time_cycles(imports) == []


def test_no_library_module_imports_the_command_line():
    imports = package_imports()
    # The python -m entry points call it, and only they.
    assert {imp.source for imp in imports if imp.target == CLI} >= {f"{PACKAGE}.report.__main__", f"{PACKAGE}.export"}
    assert library_imports_of_cli(imports) == []


def _write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_walk_finds_a_cycle_and_a_library_import_of_the_cli(tmp_path):
    """Negative control, on a package of four modules: relative and ``from package import module``
    imports resolved, deferred and entry-point imports told apart."""
    _write_package(tmp_path, {
        "__init__.py": "",
        "cli.py": "def main():\n    from vicreg_lightning import export\n",
        "export.py": "from .cli import main\nfrom vicreg_lightning.sub import a\n",
        "sub/__init__.py": "",
        "sub/a.py": "from ..sub import b\n\ndef f():\n    from vicreg_lightning import cli\n",
        "sub/b.py": "from . import a\nif __name__ == '__main__':\n    import vicreg_lightning.cli\n",
    })
    imports = package_imports(tmp_path)
    assert load_time_cycles(imports) == [["vicreg_lightning.sub.a", "vicreg_lightning.sub.b"]]
    assert library_imports_of_cli(imports) == ["vicreg_lightning.export -> vicreg_lightning.cli",
                                               "vicreg_lightning.sub.a -> vicreg_lightning.cli"]
