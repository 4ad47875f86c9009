"""The Masker base class: how "removing" image regions is done for perturbation metrics.

Faithfulness metrics remove the regions a map points at and watch the score. What "remove"
means changes the answer (a grey patch is itself a feature), so it is a choice, named and
reported: fill with the data set mean, blur, noise, or, for ViT hosts, drop the patch tokens
from the sequence. A masker is a plugin (``register_maskers``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from .interfaces import ExplainerLike


def grid_to_pixels(grid_masks: Tensor, size: tuple[int, int]) -> Tensor:
    """``(N, h, w)`` bool grid masks -> ``(N, 1, H, W)`` bool pixel masks (nearest)."""
    return F.interpolate(grid_masks[:, None].float(), size=size, mode="nearest") > 0.5


class Masker:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: adapter capabilities needed (e.g. "token_drop")
    requires: ClassVar[frozenset[str]] = frozenset()
    #: True if the output depends only on the images, the masks and the options (no random
    #: draws, no state): ``evaluate`` then reuses the embedding of an image masked the same way
    #: for another variant of the same pairs instead of running the host again
    deterministic: ClassVar[bool] = False

    def __init__(self, **options: Any) -> None:
        self.options = options

    def __call__(self, images: Tensor, grid_masks: Tensor) -> Tensor:
        """Images with the cells of ``grid_masks`` (``(N, h, w)`` bool, True = remove)
        removed; a row whose mask removes nothing is its image unchanged (metrics take its
        embedding from what ``evaluate`` embedded, without calling the masker)."""
        raise NotImplementedError

    def embed(self, explainer: ExplainerLike, images: Tensor, grid_masks: Tensor,
              batch_size: int = 64) -> Tensor:
        """L2-normalised embeddings of the masked images (token maskers override this)."""
        return explainer.embed(self(images, grid_masks), batch_size=batch_size)


class MaskingContext(Protocol):
    """What :func:`resolve_masker` reads of a :class:`~reid_explain.plugin_api.metric.MetricContext`
    (a Protocol, so that this module and metric.py need not import each other)."""

    @property
    def masker(self) -> Masker | None: ...

    @property
    def explainer(self) -> ExplainerLike: ...


def resolve_masker(context: MaskingContext, masker: str | Masker | None = None,
                   masker_options: dict[str, Any] | None = None) -> Masker:
    """The masker a metric's options name, else the context's, else ``"mean"``; checked
    against the host's capabilities so a ViT-only masker on a CNN fails with a reason."""
    from . import manager as plugin_manager

    if isinstance(masker, Masker):
        chosen = masker
    elif masker is None and context.masker is not None:
        chosen = context.masker
    else:
        cls = plugin_manager.get("maskers", masker or "mean").obj
        chosen = cls(**(masker_options or {}))
    adapter = context.explainer.adapter
    missing = set(chosen.requires) - set(adapter.capabilities)
    if missing:
        raise ValueError(f"masker {chosen.name!r} needs {sorted(missing)}, which adapter "
                         f"{adapter.name!r} ({type(adapter.model).__name__}) lacks")
    return chosen
