"""What the parts need from an explainer, as a Protocol.

Grounding, the evaluation protocol, maskers, metrics and the report run the host through an
explainer they are handed; typing them against this Protocol rather than
:class:`reid_explain.explain.explainer.Explainer` keeps every dependency pointing from the façade to
the parts (the Explainer satisfies it, and so does the lighter
:class:`reid_explain.core.engine.Engine`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from torch import Tensor, nn

from .adapter import Adapter
from .host_guard import HostGuard
from .maps import PairExplanation, TextImageExplanation
from .targets import Target


class ExplainerLike(Protocol):
    """An adapter, its host guard, embeddings and attribution; see ``Explainer``."""

    adapter: Adapter
    guard: HostGuard

    @property
    def model(self) -> nn.Module: ...

    def embed(self, images: Tensor, batch_size: int | None = None) -> Tensor: ...

    def embed_text(self, texts: Sequence[str] | str, batch_size: int = 64) -> Tensor: ...

    def attribute(self, inputs: Tensor, target: Target, method: str = "gradcam",
                  baselines: Any = None, internal_batch_size: int | None = None,
                  modality: str = "image", **options: Any) -> Tensor: ...

    def explain(self, query: Tensor, gallery: Tensor, method: str = "gradcam",
                **options: Any) -> PairExplanation: ...

    def explain_text(self, texts: Sequence[str] | str, images: Tensor,
                     method: str = "gradcam", text_method: str | None = "token_ig",
                     **options: Any) -> TextImageExplanation: ...

    def ground(self, images: Tensor, captions: Sequence[str] | str,
               method: str = "similarity", **options: Any) -> Any: ...
