"""The Attribution base class: one explanation method, Captum-style.

A subclass sets ``name`` and implements ``attribute(inputs, target, baselines=None, **options)``
returning one map per input row: ``(B, h, w)`` over the image (any resolution; the patch grid is
typical) for ``modality = "image"``, ``(B, L)`` over text tokens for ``modality = "text"``.
``target`` is a callable turning embeddings into the score to explain (see
:mod:`reid_explain.plugin_api.targets`), so the same method explains image-image similarity and
text-image similarity. Inputs are batched: one call explains many pairs at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

from torch import Tensor, nn

from .adapter import Adapter
from .targets import Target


class Attribution:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: "image": maps over image inputs; "text": relevance over token inputs
    modality: ClassVar[str] = "image"
    #: adapter capabilities this method needs ("attention", "text")
    requires: ClassVar[frozenset[str]] = frozenset()
    #: False: the host's parameters are frozen while this method runs, so autograd keeps only
    #: the graph between what the method differentiates (inputs, a layer) and the score, not
    #: the whole network's weight-gradient graph (memory bounded by the method's needs)
    needs_parameter_gradients: ClassVar[bool] = True
    #: True: ``attribute`` accepts ``image_index`` (row -> input image) with one input per
    #: distinct image, so an image explained against many references is run through the host
    #: once up to the explained layer (see :class:`~reid_explain.core.engine.Engine`)
    shares_images: ClassVar[bool] = False
    #: True: maps are signed and pixel-level (integrated gradients): drawn as Captum's
    #: ``visualize_image_attr`` draws them, not min-max scaled (report figures)
    signed: ClassVar[bool] = False
    #: False: a costly method run only when asked for by name; the report's "every method the
    #: host supports" leaves it out
    by_default: ClassVar[bool] = True

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter

    def forward_func(self, target: Target) -> Callable[..., Tensor]:
        """``f(inputs, *target.args) -> (B,)`` scores: the function Captum differentiates."""
        embed = self.adapter.embed_text if self.modality == "text" else self.adapter.embed_image

        def forward(inputs: Tensor, *args: Tensor) -> Tensor:
            return target(embed(inputs), *args)

        return forward

    def host_modules(self, names: list[str]) -> list[nn.Module]:
        """The host's modules of these names (a ``layer=``/``layers=`` option or the stages
        the adapter found), or a ValueError naming every one the host lacks."""
        modules = dict(self.adapter.model.named_modules())
        unknown = [n for n in names if n not in modules]
        if unknown:
            raise ValueError(f"{self.name}: no module {', '.join(map(repr, unknown))} in "
                             f"{type(self.adapter.model).__name__}")
        return [modules[n] for n in names]

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  **options: Any) -> Tensor:
        raise NotImplementedError
