"""A training session: the auxiliary losses and backbone modifications attached to one host.

``attach(model, losses=[...])`` is the one call a user adds before their loop; the session owns
every hook and module it puts on the host, shares one forward capture between the losses (so
the user's own forward feeds them all), and ``detach()`` leaves the host as it was.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from torch import Tensor, nn

from ..core.adapter_choice import choose_adapter
from ..errors import PluginError, UnknownPluginError
from ..plugin_api import manager as plugin_manager
from ..plugin_api.adapter import Adapter
from ..plugin_api.training_hooks import BackboneModification, TrainingLoss, build_modification
from .capture import ForwardCapture

_SESSIONS: weakref.WeakKeyDictionary[nn.Module, TrainingSession] = weakref.WeakKeyDictionary()


class TrainingSession:
    """Auxiliary losses (by name, with options) and modifications attached to one host."""

    def __init__(self, model: nn.Module, losses: Sequence[str] = (),
                 modifications: Sequence[str] = (),
                 options: Mapping[str, Mapping[str, Any]] | None = None,
                 adapter: Adapter | None = None) -> None:
        options = dict(options or {})
        self.model = model
        self.adapter = adapter or choose_adapter(model)(model)
        self.modifications: dict[str, BackboneModification] = {}
        for name in modifications:
            self.modifications[name] = build_modification(self.adapter, name,
                                                          **options.get(name, {}))
        self.losses: dict[str, TrainingLoss] = {}
        self.capture: ForwardCapture | None = None
        entries = [plugin_manager.get("training_losses", name) for name in losses]
        if entries:
            self.capture = ForwardCapture(self.adapter)
        for entry in entries:
            kwargs = dict(options.get(entry.name, {}))
            kwargs["capture"] = self.capture
            if entry.name == "attention_constraint" and "ppim" in self.losses:
                kwargs.setdefault("ppim", self.losses["ppim"])
            try:
                self.losses[entry.name] = entry.obj(self.adapter, **kwargs)
            except TypeError as exc:
                raise PluginError(f"training loss {entry.name!r} from plugin {entry.plugin!r}: "
                                  f"{exc}") from exc
        self.weights = {name: float(options.get(name, {}).get("weight", 1.0))
                        for name in self.losses}
        self.last: dict[str, float] = {}
        self.attached = False

    def attach(self) -> TrainingSession:
        if self.attached:
            return self
        try:
            for modification in self.modifications.values():
                modification.apply()
            if self.capture is not None:
                blocks = sorted({b for loss in self.losses.values()
                                 for b in getattr(loss, "attention_blocks", ())})
                patch_blocks = {getattr(loss, "patch_block", None) for loss in self.losses.values()
                                if hasattr(loss, "patch_block")}
                if len(patch_blocks) > 1:
                    raise ValueError(f"training losses disagree on patch_block: {patch_blocks}")
                self.capture.attach(attention_blocks=tuple(blocks),
                                    patch_block=patch_blocks.pop() if patch_blocks else None)
            for loss in self.losses.values():
                loss.attach()
        except Exception:
            self.detach(force=True)
            raise
        self.attached = True
        _SESSIONS[self.model] = self
        return self

    def detach(self, force: bool = False) -> None:
        if not (self.attached or force):
            return
        for loss in self.losses.values():
            loss.detach()
        if self.capture is not None:
            self.capture.detach()
        for modification in reversed(list(self.modifications.values())):
            modification.remove()
        self.adapter.close()
        self.attached = False
        if _SESSIONS.get(self.model) is self:
            del _SESSIONS[self.model]

    def __enter__(self) -> TrainingSession:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def modification(self, name: str) -> BackboneModification:
        """The session's modification ``name`` (e.g. ``"lora_moe"``: route / ablate / bypass)."""
        try:
            return self.modifications[name]
        except KeyError:
            raise UnknownPluginError(
                f"this session has no modification {name!r}; it has "
                f"{sorted(self.modifications) or 'none'} (attach(model, "
                f"modifications=[{name!r}]) adds it)") from None

    def parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the plugins own (heads, experts): add them to the optimiser."""
        for loss in self.losses.values():
            yield from loss.parameters()
        for modification in self.modifications.values():
            yield from modification.parameters()

    def __call__(self, batch: Mapping[str, Any]) -> Tensor:
        """Sum of the auxiliary losses for the batch whose forward the host just ran."""
        if not self.losses:
            raise RuntimeError("this session has no training losses")
        total: Tensor | None = None
        parts: dict[str, float] = {}
        for name, loss in self.losses.items():
            try:
                value = loss.loss(batch)
            except Exception as exc:
                raise PluginError(f"training loss {name!r} raised {type(exc).__name__}: "
                                  f"{exc}") from exc
            parts[name] = value.item()
            parts.update(getattr(loss, "last", {}))
            total = value if total is None else total + value
        self.last = parts
        assert total is not None
        return total

    def state_dict(self) -> dict[str, dict[str, Tensor]]:
        state = {f"loss.{n}": loss.state_dict() for n, loss in self.losses.items()}
        state.update({f"modification.{n}": m.state_dict()
                      for n, m in self.modifications.items()})
        return state

    def load_state_dict(self, state: Mapping[str, Mapping[str, Tensor]]) -> None:
        for name, loss in self.losses.items():
            loss.load_state_dict(state.get(f"loss.{name}", {}))
        for name, modification in self.modifications.items():
            modification.load_state_dict(state.get(f"modification.{name}", {}))


def attach(model: nn.Module, losses: Sequence[str] = (), modifications: Sequence[str] = (),
           **options: Mapping[str, Any]) -> TrainingSession:
    """Attach auxiliary losses / modifications to ``model`` (options keyed by plugin name)."""
    return TrainingSession(model, losses, modifications, options).attach()


def auxiliary_losses(model: nn.Module, batch: Mapping[str, Any]) -> Tensor:
    """The attached auxiliary losses for the batch the host just ran forward on.

    Add the result to your own loss. ``batch`` holds ``captions`` (list of str), optionally
    ``phrases`` (per caption, spans with ``start``/``end``) and ``pids``.
    """
    session = _SESSIONS.get(model)
    if session is None:
        raise RuntimeError("no training losses are attached to this model; call "
                           "reid_explain.attach(model, losses=[...]) first")
    return session(batch)
