"""The façade: :func:`explainify` and the :class:`Explainer` it returns (``explainer``),
phrase grounding on text-image hosts (``grounding``) and building hosts from a spec or a
checkpoint for the CLI (``hosts``). The top of the library: it may import every subsystem;
only entry points (the package root, the CLI, the studies) import it."""

from __future__ import annotations

from .._util.lazy import lazy_exports

_EXPORTS: dict[str, str] = {"Explainer": "explainer", "explainify": "explainer"}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = sorted(_EXPORTS)
