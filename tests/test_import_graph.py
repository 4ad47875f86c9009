"""The core's imports point one way: façade → parts, with no circle.

Every module under ``reid_explain/`` is parsed with :mod:`ast`; every import counts, at module
level, inside a function (lazy) or under ``if TYPE_CHECKING:``, because a part that needs the
façade even for its types cannot be understood, tested or reused without it. Importing a
submodule does not count as depending on its package's ``__init__`` (that is Python's package
mechanism, not a design choice), but ``from pkg import name`` where ``name`` is no submodule
depends on ``pkg/__init__.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "reid_explain"

# Cycles tolerated on purpose, each with why; empty: the core has none.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}


def module_files(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name → file, for every ``.py`` under the package."""
    files = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _resolve(name: str, modules: set[str]) -> str | None:
    """The longest known module that ``name`` is or lies inside, if any."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: set[str]) -> set[str]:
    """Package modules ``module`` imports anywhere in its source (lazy and typing-only too)."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _resolve(alias.name, modules)
                if target:
                    found.add(target)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                if not is_package:
                    base = base[:-1]
                base = base[: len(base) - (node.level - 1)]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            if _resolve(origin, modules) is None:
                continue
            for alias in node.names:
                sub = f"{origin}.{alias.name}"
                target = sub if sub in modules else _resolve(origin, modules)
                if target:
                    found.add(target)
    found.discard(module)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    files = module_files(root, package)
    names = set(files)
    return {name: imports_of(name, path, names) for name, path in files.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_cycle_in(graph, set(c)) for c in components]


def _cycle_in(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A concrete loop a → b → … → a inside one strongly connected component."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph[node] & component):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no loop through {start} in {sorted(component)}")


def test_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"d"}}
    cycles = find_cycles(graph)
    assert len(cycles) == 1
    assert cycles[0][0] == cycles[0][-1] == "a" and set(cycles[0]) == {"a", "b", "c"}
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_parser_counts_lazy_and_typing_only_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .facade import Facade\n")
    (pkg / "facade.py").write_text("def f():\n    from .sub.part import g\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "part.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..facade import Facade\n"
        "from .. import facade as _f\n")
    graph = import_graph(tmp_path, "pkg")
    assert graph["pkg.facade"] == {"pkg.sub.part"}
    assert graph["pkg.sub.part"] == {"pkg.facade"}
    assert graph["pkg"] == {"pkg.facade"}
    assert find_cycles(graph) == [["pkg.facade", "pkg.sub.part", "pkg.facade"]]


def test_parser_sees_the_real_facade_edges() -> None:
    graph = import_graph()
    assert "reid_explain.evaluation.protocol" in graph["reid_explain.explainer"]
    assert "reid_explain.grounding" in graph["reid_explain.explainer"]


def test_core_has_no_import_cycle() -> None:
    cycles = [c for c in find_cycles(import_graph())
              if tuple(sorted(set(c))) not in KNOWN_CYCLES]
    assert not cycles, "import cycles in the core:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_no_part_imports_the_facade() -> None:
    """Only entry points (package __init__, CLI, demo, report) may import the Explainer."""
    allowed = {"reid_explain", "reid_explain.cli", "reid_explain.demo"}
    graph = import_graph()
    users = sorted(m for m, deps in graph.items()
                   if "reid_explain.explainer" in deps and m not in allowed)
    assert not users, f"parts that import the façade reid_explain.explainer: {users}"
