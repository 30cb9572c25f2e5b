"""The package's import graph: no cycles, and the fit path stays out of the evaluation package.

Read from the source with :mod:`ast` rather than by importing, so every import counts,
the lazy ones inside functions and the ``TYPE_CHECKING`` ones included: a cycle that only
closes at call time is still two modules that cannot be understood one without the other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "eco_guard"


def _modules(package: Path) -> dict[str, tuple[Path, bool]]:
    """Dotted module name -> (file, whether it is a package's ``__init__``)."""
    out = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        is_init = parts[-1] == "__init__"
        out[".".join(parts[:-1] if is_init else parts)] = (path, is_init)
    return out


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (relative imports resolved).

    ``from . import x`` where ``x`` is a submodule is an edge to ``x`` alone: the parent
    package's ``__init__`` runs whenever any submodule is imported, so counting it would
    make every package a cycle with its own members.
    """
    mods = _modules(package)
    root = package.name
    graph: dict[str, set[str]] = {}
    for name, (path, is_init) in mods.items():
        here = name.split(".") if is_init else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.split(".")[0] == root)
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                if module.split(".")[0] != root:
                    continue
                subs = [f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in mods]
                deps.update(subs)
                if len(subs) < len(node.names):
                    deps.add(module)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        v = todo.pop()
        if v not in seen:
            seen.add(v)
            todo.extend(graph[v])
    return seen


def test_the_package_has_no_import_cycles() -> None:
    graph = import_graph()
    assert len(graph) > 50  # the walk found the package, subpackages included
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    """The test above can fail: a two-module cycle through a relative import is reported."""
    pkg = tmp_path / "eco_guard"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub.b import thing\n")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..a import other\n")
    assert cycles(import_graph(pkg)) == [["eco_guard.a", "eco_guard.sub.b"]]


@pytest.mark.parametrize("entry", ["eco_guard.fitting", "eco_guard.guard", "eco_guard.optimize"])
def test_fitting_and_serving_do_not_reach_into_evaluation(entry: str) -> None:
    """Evaluation measures a fitted guard; fitting and answering must not depend on it."""
    assert sorted(m for m in reachable(import_graph(), entry) if m.startswith("eco_guard.evaluation")) == []
