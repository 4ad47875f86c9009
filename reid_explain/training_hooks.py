"""Base classes of training-time plugins: backbone modifications and auxiliary losses.

Both act on a host only when the user asks (``apply()`` / ``attach()``), own everything they add
(modules, hooks, parameters) and take it all away again (``remove()`` / ``detach()``), after
which the host's forward is bit-identical to what it was. Both are context managers.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

from torch import Tensor, nn

from .adapter import Adapter


class BackboneModification:
    """Injects modules into the blocks an adapter exposes (e.g. residual LoRA experts).

    Subclasses implement ``_apply`` and ``_remove``; ``parameters()`` yields the parameters the
    modification added (what an optimiser should train), ``state_dict()`` /
    ``load_state_dict()`` save and restore them.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: adapter capabilities needed (e.g. "attention" for ViT blocks)
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, adapter: Adapter, **options: Any) -> None:
        self.adapter = adapter
        self.options = options
        self.applied = False

    def apply(self) -> BackboneModification:
        if not self.applied:
            self._apply()
            self.applied = True
        return self

    def remove(self) -> None:
        if self.applied:
            self._remove()
            self.applied = False

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


class TrainingLoss:
    """An auxiliary loss for the user's own training loop (PPIM, attention constraints).

    ``attach()`` puts the hooks the loss needs on the host (to read patch tokens or attention
    during the user's forward); ``loss(batch)`` returns a scalar for the batch; ``parameters()``
    yields the loss's own trainable heads (empty for pure regularisers).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    requires: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, adapter: Adapter, **options: Any) -> None:
        self.adapter = adapter
        self.options = options
        self.attached = False

    def attach(self) -> TrainingLoss:
        if not self.attached:
            self._attach()
            self.attached = True
        return self

    def detach(self) -> None:
        if self.attached:
            self._detach()
            self.attached = False

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
