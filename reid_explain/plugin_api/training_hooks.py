"""Base classes of training-time plugins: backbone modifications and auxiliary losses.

Both act on a host only when the user asks (``apply()`` / ``attach()``), own everything they add
(modules, hooks, parameters) and take it all away again (``remove()`` / ``detach()``), after
which the host's forward is bit-identical to what it was. Both are context managers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from ..errors import AdapterError, PluginError, ReidExplainError
from . import manager as plugin_manager
from .adapter import Adapter


class _OnHost:
    """What both kinds of training plugin share: a name, the adapter, options, and an on/off
    state so that switching on or off twice is harmless."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: adapter capabilities needed (e.g. "attention" for ViT blocks, "text" for phrases)
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, adapter: Adapter, **options: Any) -> None:
        self.adapter = adapter
        self.options = options
        self._on = False

    def _switch(self, on: bool) -> None:
        if on != self._on:
            (self._turn_on if on else self._turn_off)()
            self._on = on

    def _turn_on(self) -> None:
        pass

    def _turn_off(self) -> None:
        pass


class BackboneModification(_OnHost):
    """Injects modules into the blocks an adapter exposes (e.g. residual LoRA experts).

    Subclasses implement ``_apply`` and ``_remove``; ``parameters()`` yields the parameters the
    modification added (what an optimiser should train), ``state_dict()`` /
    ``load_state_dict()`` save and restore them.
    """

    @property
    def applied(self) -> bool:
        return self._on

    def apply(self) -> BackboneModification:
        self._switch(True)
        return self

    def remove(self) -> None:
        self._switch(False)

    def _turn_on(self) -> None:
        self._apply()

    def _turn_off(self) -> None:
        self._remove()

    def _apply(self) -> None:
        raise NotImplementedError

    def _remove(self) -> None:
        raise NotImplementedError

    def parameters(self) -> Iterator[nn.Parameter]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor]:
        raise NotImplementedError

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        raise NotImplementedError

    def __enter__(self) -> BackboneModification:
        return self.apply()

    def __exit__(self, *exc: object) -> None:
        self.remove()


class TrainingLoss(_OnHost):
    """An auxiliary loss for the user's own training loop (PPIM, attention constraints).

    ``attach()`` puts the hooks the loss needs on the host (to read patch tokens or attention
    during the user's forward); ``loss(batch)`` returns a scalar for the batch; ``parameters()``
    yields the loss's own trainable heads (empty for pure regularisers).
    """

    @property
    def attached(self) -> bool:
        return self._on

    def attach(self) -> TrainingLoss:
        self._switch(True)
        return self

    def detach(self) -> None:
        self._switch(False)

    def _turn_on(self) -> None:
        self._attach()

    def _turn_off(self) -> None:
        self._detach()

    def _attach(self) -> None:
        pass

    def _detach(self) -> None:
        pass

    def loss(self, batch: Mapping[str, Any]) -> Tensor:
        raise NotImplementedError

    def parameters(self) -> Iterator[nn.Parameter]:
        return iter(())

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        if state:
            raise ValueError(f"training loss {self.name!r} has no parameters to load")

    def __enter__(self) -> TrainingLoss:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()


def build_modification(adapter: Adapter, name: str, **options: Any) -> BackboneModification:
    """The registered backbone modification ``name`` on ``adapter``, not yet applied.

    Unknown names raise :class:`~reid_explain.errors.UnknownPluginError` listing the known
    ones; a host lacking a capability the modification needs, an :class:`AdapterError`; bad
    options, a :class:`PluginError` naming the plugin.
    """
    entry = plugin_manager.get("backbone_modifications", name)
    cls = entry.obj
    missing = set(cls.requires) - set(adapter.capabilities)
    if missing:
        raise AdapterError(
            f"backbone modification {name!r} needs {sorted(missing)}, which adapter "
            f"{adapter.name!r} ({type(adapter.model).__name__}) lacks (it has "
            f"{sorted(adapter.capabilities)})")
    try:
        return cls(adapter, **options)
    except ReidExplainError:
        raise
    except Exception as exc:
        raise PluginError(f"backbone modification {name!r} from plugin {entry.plugin!r}: "
                          f"{type(exc).__name__}: {exc}") from exc
