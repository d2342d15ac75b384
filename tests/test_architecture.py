"""The shape of the code under src/: no import cycles among linewatch modules, and no module too long to read.

The import graph is read from the source with :mod:`ast` (nothing is imported), and it counts every import
statement wherever it is, module level or inside functions (the lazy imports of CLI commands and workers):
a cycle through a lazy import still means two modules that each need the other. Only imports under
``if TYPE_CHECKING:`` are left out: they never run, they only name types for annotations.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
MAX_LINES = 350


def module_files(root: Path = SRC) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under ``root/linewatch`` (a package is its ``__init__``)."""
    out = {}
    for path in sorted((root / "linewatch").rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_modules(name: str, path: Path, known: set[str]) -> set[str]:
    """The linewatch modules that module ``name`` (its source at ``path``) imports, anywhere in the file.

    ``from P import X`` counts as an import of ``P.X`` when that is a module, else of ``P``. Relative imports
    are resolved against the module's package. Names outside ``known`` (third-party, stdlib) are ignored.
    """
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                found.add(candidate if candidate in known else base)
    return {m for m in found if m in known and m != name}


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` blocks (their ``else`` runs)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    """Module -> the linewatch modules it imports."""
    files = module_files(root)
    known = set(files)
    return {name: imported_modules(name, path, known) for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
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
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_relative_import(tmp_path):
    pkg = tmp_path / "linewatch" / "pkg"
    pkg.mkdir(parents=True)
    (tmp_path / "linewatch" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import THING\n")
    (pkg / "b.py").write_text("def f():\n    from linewatch.pkg import a\n")
    (pkg / "c.py").write_text("from . import a\n")
    (pkg / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .e import T\n")
    (pkg / "e.py").write_text("from .d import U\n")  # d needs e only for annotations: not a cycle
    graph = import_graph(tmp_path)
    assert graph["linewatch.pkg.a"] == {"linewatch.pkg.b"}
    assert graph["linewatch.pkg.b"] == {"linewatch.pkg.a"}
    assert graph["linewatch.pkg.c"] == {"linewatch.pkg.a"}
    assert graph["linewatch.pkg.d"] == set()
    assert cycles(graph) == [["linewatch.pkg.a", "linewatch.pkg.b"]]


def test_no_import_cycle_among_linewatch_modules():
    graph = import_graph()
    assert "linewatch.detector.stream.worker" in graph  # the graph is read from the real tree
    assert cycles(graph) == []


def test_no_module_is_over_350_lines():
    too_long = {}
    for path in module_files().values():
        relative = path.relative_to(SRC).as_posix()
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_LINES:
            too_long[relative] = lines
    assert too_long == {}
