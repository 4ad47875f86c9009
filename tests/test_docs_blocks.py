"""Every Python block of the docs runs as written and imports only public names (issue 16).

The blocks of one file run in order in one fresh namespace, like a doctest session, in an empty
working directory. Whatever a block needs (a model, images, a data set in a real format) an
earlier block of the same file builds in plain sight; the test adds nothing but pinning torch
to one thread (speed only).
"""

from __future__ import annotations

import ast
import re
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import reid_explain

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^[ \t]*```(?:python|py)\b[^\n]*\n(.*?)^[ \t]*```[ \t]*$",
                   re.MULTILINE | re.DOTALL)

#: modules and names that are internal although their spelling is not private
INTERNAL_MODULES = ("reid_explain.plugin_api.manager", "reid_explain.plugin_manager")
INTERNAL_NAMES = frozenset({"plugin_manager", "choose_adapter"})
#: text a block must not contain even outside an import (``plugin_manager.get(...)``)
INTERNAL_TEXT = re.compile(r"\bplugin_manager\.|\bplugin_api\.manager\.|\bchoose_adapter\b|"
                           r"\breid_explain(\.\w+)*\._(?!_)")

#: files whose blocks take longer than ~10 s on two shared cores
SLOW = frozenset({"README.md", "attribute_study.md"})


def python_blocks(path: Path) -> list[tuple[int, str]]:
    """``(first line, code)`` of every fenced ``python`` block of a Markdown file."""
    text = path.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start(1)) + 1, textwrap.dedent(m.group(1)))
            for m in FENCE.finditer(text)]


def doc_files() -> list[Path]:
    """README.md and every ``docs/*.md`` that holds at least one Python block."""
    candidates = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [p for p in candidates if python_blocks(p)]


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _internal_module(module: str) -> bool:
    parts = module.split(".")
    return (any(_private(p) or p in INTERNAL_NAMES for p in parts)
            or any(module == m or module.startswith(m + ".") for m in INTERNAL_MODULES))


def internal_uses(code: str) -> list[str]:
    """What ``code`` reaches that is private or internal; empty when it uses the public API."""
    found = [f"text {m.group(0)!r}" for m in INTERNAL_TEXT.finditer(code)]
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if _internal_module(a.name)]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level or _internal_module(module):
                found.append(f"from {'.' * node.level}{module} import ...")
            found += [f"from {module} import {a.name}" for a in node.names
                      if _private(a.name) or a.name in INTERNAL_NAMES
                      or _internal_module(f"{module}.{a.name}")]
        elif isinstance(node, ast.Attribute) and (_private(node.attr)
                                                  or node.attr in INTERNAL_NAMES):
            found.append(f"attribute .{node.attr}")
    return found


DOC_PARAMS = [pytest.param(p, id=p.name, marks=[pytest.mark.slow] if p.name in SLOW else [])
              for p in doc_files()]


def test_docs_have_python_blocks() -> None:
    """The collection itself works: the docs known to hold Python blocks are found."""
    names = {p.name for p in doc_files()}
    assert {"README.md", "data.md", "plugins.md", "zoo.md"} <= names


@pytest.mark.parametrize("path", DOC_PARAMS)
def test_docs_import_only_public_names(path: Path) -> None:
    bad = {line: uses for line, code in python_blocks(path) if (uses := internal_uses(code))}
    assert not bad, f"{path.name}: blocks (by first line) reach internal names: {bad}"


@pytest.mark.parametrize("snippet", [
    "from reid_explain.explain.explainer import choose_adapter",
    "from reid_explain.explainer import choose_adapter",  # the paths before issue 29's moves
    "from reid_explain.plugin_api.manager import get",
    "from reid_explain.plugin_manager import get",
    "import reid_explain.plugin_api.manager as pm",
    "from reid_explain import plugin_manager",
    "from reid_explain.plugin_api import manager",
    "from reid_explain._util.io import atomic_path",
    "import reid_explain._io",
    "import reid_explain._util.io",
    "from reid_explain.synthpedes.export import _write",
    "from .explainer import Explainer",
    "import reid_explain\nreid_explain.plugin_api.manager.get('metrics', 'mask_iou')",
    "import reid_explain\nreid_explain.plugin_manager.get('metrics', 'mask_iou')",
    "entry = plugins.get('metrics', 'x')  # via plugin_manager.get",
    "exp = make()\nexp._adapter.embed_image(x)",
])
def test_internal_use_checker_flags_bad_snippets(snippet: str) -> None:
    assert internal_uses(snippet)


def test_internal_use_checker_passes_public_api() -> None:
    good = ("import reid_explain\nfrom reid_explain import explainify, zoo\n"
            "from reid_explain.data.attributes import load_attributes\n"
            "print(reid_explain.__version__, reid_explain.list_plugins())")
    assert internal_uses(good) == []


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine two threads ran the docs' small models
    10-30x slower (a Grad-CAM call took 5-19 s against 0.1-0.7 s); what a block computes does
    not depend on it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("path", DOC_PARAMS)
def test_docs_python_blocks_run(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                one_thread: None) -> None:
    """The file's blocks run in order in one namespace and leave no plugin registered."""
    monkeypatch.chdir(tmp_path)
    before = {p["name"] for p in reid_explain.list_plugins()}
    namespace: dict = {"__name__": f"docs_{path.stem}"}
    start = time.perf_counter()
    try:
        for line, code in python_blocks(path):
            # pad so that a traceback names the Markdown file and its own line numbers
            exec(compile("\n" * (line - 1) + code, str(path), "exec"), namespace)  # noqa: S102
    finally:
        leaked = {p["name"] for p in reid_explain.list_plugins()} - before
        for name in leaked:
            reid_explain.unregister(name=name)
    assert not leaked, f"{path.name} leaves plugins registered: {sorted(leaked)}"
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")
