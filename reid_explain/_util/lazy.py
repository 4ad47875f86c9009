"""Lazy package exports: a package's names are imported from their modules on first use, so
importing the package (as plugin registration and the CLI's input checks do) stays fast."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, exports: Mapping[str, str], namespace: dict[str, Any],
                 moved: Mapping[str, str] | None = None
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: ``exports`` maps a name to the submodule
    that defines it; a name is imported once and then kept in ``namespace``. ``moved`` maps a
    name that left the package to the module that now holds it: still served, with a
    DeprecationWarning, and not listed by ``dir()``."""
    moved = dict(moved or {})

    def __getattr__(name: str) -> Any:
        if name in moved:
            from .moved import warn_moved

            # ``from package import name`` asks twice (importlib's hasattr, then the import
            # itself): the user's line is warned once, by the second
            if sys._getframe(1).f_code.co_name != "_handle_fromlist":
                warn_moved(f"{package}.{name}", f"{moved[name]}.{name}")
            return getattr(importlib.import_module(moved[name]), name)
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{module}", package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__


def import_torchreid() -> Any:
    """torchreid, imported without its warning that its Cython evaluator is not compiled: this
    package ranks with its own vectorised code (``evaluation.retrieval``, checked against
    torchreid's ``evaluate_rank``), so the warning would be noise on a user's terminal."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cython evaluation", category=UserWarning)
        import torchreid
    return torchreid
