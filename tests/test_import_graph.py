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
    assert "reid_explain.evaluation.protocol" in graph["reid_explain.explain.explainer"]
    assert "reid_explain.explain.grounding" in graph["reid_explain.explain.explainer"]


def test_core_has_no_import_cycle() -> None:
    cycles = [c for c in find_cycles(import_graph())
              if tuple(sorted(set(c))) not in KNOWN_CYCLES]
    assert not cycles, "import cycles in the core:\n" + "\n".join(" → ".join(c) for c in cycles)


#: The layers, lowest first (docs/architecture.md). A module may import its own layer and any
#: layer below it, never one above: the contract does not know the engine, the engine does not
#: know the subsystems, no subsystem knows the façade. The longest matching prefix decides.
LAYERS: list[tuple[str, ...]] = [
    ("reid_explain.errors", "reid_explain._util"),
    ("reid_explain.hookspecs", "reid_explain.plugin_api"),
    ("reid_explain.data",),
    ("reid_explain.synthpedes",),
    ("reid_explain.core",),
    ("reid_explain.training", "reid_explain.evaluation"),
    ("reid_explain.attributes",),
    ("reid_explain.moe", "reid_explain.zoo"),
    ("reid_explain.report",),
    ("reid_explain.explain",),
    ("reid_explain.studies",),
    ("reid_explain", "reid_explain.cli", "reid_explain.__main__"),
]


def layer_of(module: str, layers: list[tuple[str, ...]] = LAYERS) -> int:
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(layers):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and \
                    (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    if best is None:
        raise AssertionError(f"{module} is in no layer: add its folder to LAYERS and to "
                             "docs/architecture.md")
    return best[0]


def upward_imports(graph: dict[str, set[str]],
                   layers: list[tuple[str, ...]] = LAYERS) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs where a lower layer imports a higher one."""
    return sorted((m, d) for m, deps in graph.items() for d in deps
                  if layer_of(d, layers) > layer_of(m, layers))


def test_imports_run_down_the_layers() -> None:
    bad = upward_imports(import_graph())
    assert not bad, "imports against the layer order (docs/architecture.md):\n" + "\n".join(
        f"{m} (layer {layer_of(m)}) → {d} (layer {layer_of(d)})" for m, d in bad)


def test_layer_check_fails_on_a_planted_upward_import(tmp_path: Path) -> None:
    """A copy of the real package with one upward import added (the plugin contract reaching
    for the façade, lazily inside a function) must fail the check, naming that edge."""
    import shutil

    shutil.copytree(ROOT / PACKAGE, tmp_path / PACKAGE,
                    ignore=shutil.ignore_patterns("__pycache__", "weights"))
    target = tmp_path / PACKAGE / "plugin_api" / "targets.py"
    target.write_text(target.read_text() + "\n\ndef _planted():\n"
                      "    from ..explain.explainer import explainify\n"
                      "    return explainify\n")
    assert upward_imports(import_graph(tmp_path, PACKAGE)) == [
        ("reid_explain.plugin_api.targets", "reid_explain.explain.explainer")]
    assert upward_imports(import_graph()) == []


def test_every_module_has_a_layer_and_every_layer_a_module() -> None:
    modules = set(module_files())
    for module in modules:
        layer_of(module)
    for prefixes in LAYERS:
        for prefix in prefixes:
            assert any(m == prefix or m.startswith(prefix + ".") for m in modules), prefix


def test_the_core_knows_no_plugin_by_name() -> None:
    """Built-ins are found through entry points like any third party's: no module of the
    core imports ``reid_explain.plugins`` or ``reid_explain.adapters``."""
    found = []
    for module, path in module_files().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):  # relative: "..plugins" gives "plugins"
                names = [node.module or ""]
            else:
                continue
            for name in names:
                if name.startswith(("reid_explain.plugins", "reid_explain.adapters",
                                    "plugins", "adapters")):
                    found.append((module, name))
    assert not found, found


def test_the_root_holds_only_entry_points_and_the_contract() -> None:
    """The package root shows the layers: loose modules are the entry points, the errors and
    the hook specifications; everything else lives in a folder that says its role."""
    loose = sorted(p.name for p in (ROOT / PACKAGE).glob("*.py"))
    assert loose == ["__init__.py", "__main__.py", "cli.py", "errors.py", "hookspecs.py"]


def test_packaging_lists_every_package() -> None:
    """pyproject's explicit package list (needed for the package-dir mapping) names every
    folder, so a wheel holds all of it (``reid_explain.studies`` was once missing)."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / PACKAGE).rglob(
        "__init__.py")}
    found |= {f"reid_explain.{'.'.join(p.parent.relative_to(ROOT).parts)}"
              for d in ("plugins", "adapters") for p in (ROOT / d).rglob("__init__.py")}
    assert found == listed, {"missing": sorted(found - listed), "extra": sorted(listed - found)}


def test_moved_paths_still_import_with_a_warning() -> None:
    """Every old path (before the layout of issue 29) gives the same module object as its
    new path, with a DeprecationWarning that names the new one."""
    import importlib
    import sys
    import warnings

    from reid_explain._util.moved import MOVED

    for old, new in MOVED.items():
        sys.modules.pop(old, None)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            module = importlib.import_module(old)
        assert module is importlib.import_module(new), old
        assert any(issubclass(w.category, DeprecationWarning) and new in str(w.message)
                   for w in caught), (old, [str(w.message) for w in caught])
        sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from reid_explain.data import load_synthpedes_side
    from reid_explain.synthpedes.side import load_synthpedes_side as new_function
    assert load_synthpedes_side is new_function
    # one warning for the user's one import line (importlib asks for the name twice)
    moved = [w for w in caught if "reid_explain.synthpedes.side" in str(w.message)]
    assert len(moved) == 1 and moved[0].filename == __file__, [str(w.message) for w in caught]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import reid_explain.data as data

        assert data.load_synthpedes_side is new_function
    assert sum("reid_explain.synthpedes.side" in str(w.message) for w in caught) == 1


def test_no_lazy_export_is_shadowed_by_a_submodule() -> None:
    """A package's lazy export must not share its name with one of its submodules: importing
    the submodule binds the name on the package, and ``from pkg import plan`` would then give
    the module instead of the function (it did, with ``synthpedes.plan``)."""
    import importlib

    clashes = []
    for module, path in module_files().items():
        if path.name != "__init__.py":
            continue
        exports = getattr(importlib.import_module(module), "_EXPORTS", {})
        submodules = {p.stem for p in path.parent.glob("*.py")} | {
            p.parent.name for p in path.parent.glob("*/__init__.py")}
        clashes += [f"{module}.{name}" for name in exports if name in submodules]
    assert not clashes, clashes
