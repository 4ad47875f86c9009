"""Which adapter wraps a host, and building it: shared by ``explainify`` and training sessions.

Kept out of the façade (:mod:`reid_explain.explain.explainer`) so that the training side and
the sanity check can wrap a model without importing the Explainer.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import AdapterError, PluginError
from ..plugin_api import manager as plugins
from ..plugin_api.adapter import Adapter
from ..plugin_api.host_guard import HostGuard


def adapter_listing() -> str:
    """Every registered adapter with its description, highest priority first (for errors)."""
    entries = sorted(plugins.registry("adapters").values(), key=lambda e: -e.obj.priority)
    return "; ".join(f"{e.name} ({e.description})" for e in entries)


def choose_adapter(model: nn.Module, layer: str | nn.Module | None = None,
                   adapter: str | type[Adapter] | None = None) -> type[Adapter]:
    """The adapter class for ``model``: named, or the highest-priority one that matches."""
    if not isinstance(model, nn.Module):
        raise AdapterError(f"explainify needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(adapter, type):
        return adapter
    if adapter is not None:
        return plugins.get("adapters", adapter).obj
    candidates = sorted(plugins.registry("adapters").values(), key=lambda e: -e.obj.priority)
    for entry in candidates:
        try:
            if entry.obj.matches(model, layer=layer):
                return entry.obj
        except Exception as exc:
            raise PluginError(f"adapter {entry.name!r} from plugin {entry.plugin!r} raised in "
                              f"matches(): {type(exc).__name__}: {exc}") from exc
    raise AdapterError(
        f"no adapter recognises {type(model).__module__}.{type(model).__name__}. "
        f"Known adapters: {adapter_listing()}. For any other model name its spatial layer: "
        "explainify(model, layer='name.of.layer') where the layer outputs (B, C, h, w) feature "
        "maps or (B, N, C) ViT tokens (see model.named_modules()), or pick one with "
        "adapter='name'.")


def build_adapter(model: nn.Module, layer: str | nn.Module | None = None,
                  adapter: str | type[Adapter] | None = None, **options: Any) -> Adapter:
    """The chosen adapter built on ``model``; its probing forward leaves the host as it was."""
    cls = choose_adapter(model, layer=layer, adapter=adapter)
    with HostGuard(model):
        try:
            return cls(model, layer=layer, **options)
        except AdapterError:
            raise
        except TypeError as exc:
            raise AdapterError(f"adapter {cls.name!r}: {exc}") from exc
