"""The Metric base class: a score of how good an explanation is.

A metric receives a :class:`MetricContext` (the explainer, to run the host on perturbed inputs;
the explanation; and, when evaluating on a data set, the retrieval context and ground-truth
masks) and returns named per-pair values. ``summarize`` turns those into data-set figures (by
default the mean of each). Metrics are plugins, used by name:
``explainer.score(explanation, metrics=["name"])`` or ``explainer.evaluate(..., metrics=[...])``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from torch import Tensor

if TYPE_CHECKING:
    from .interfaces import ExplainerLike
    from .maps import PairExplanation, TextImageExplanation
    from .masker import Masker


@dataclass
class MetricContext:
    """Everything a metric may need about one batch of explained pairs.

    Pair ``p`` explains query ``explanation.pairs[p, 0]`` against gallery item
    ``explanation.pairs[p, 1]``. The retrieval fields are set by ``evaluate`` (they are None
    for loose pairs scored with ``score``); ``gallery_index[p]`` is the position of the pair's
    gallery item in ``gallery_embeddings``.
    """

    explainer: ExplainerLike
    explanation: PairExplanation
    masker: Masker | None = None
    seed: int = 0
    #: (G, D) L2-normalised embeddings of the unmodified gallery
    gallery_embeddings: Tensor | None = None
    gallery_pids: Tensor | None = None
    gallery_camids: Tensor | None = None
    #: (P,) pid / camera of each pair's query, and its gallery item's index in the gallery
    query_pids: Tensor | None = None
    query_camids: Tensor | None = None
    gallery_index: Tensor | None = None
    #: (P, K, H, W) bool ground-truth part masks of each pair's query image, and part names
    query_masks: Tensor | None = None
    #: (P, K, H, W) bool part masks of each pair's gallery image (or the image of a text pair)
    gallery_masks: Tensor | None = None
    part_names: tuple[str, ...] = ()
    #: for text queries: the caption-side explanation
    text_explanation: TextImageExplanation | None = None

    def require(self, *fields: str, metric: str = "this metric") -> None:
        missing = [f for f in fields if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{metric} needs {missing}: run it through evaluate() on a data set"
                             " that provides them")


SIDES = ("query", "gallery")


def perturbable_sides(context: MetricContext, side: str = "both") -> list[tuple[str, Any]]:
    """The explanation's ``(side name, GroundingMap)`` pairs a perturbation metric works on:
    ``"query"``, ``"gallery"`` or ``"both"`` (those present), each with images and the fixed
    reference embeddings its scores are measured against."""
    if side not in ("both", *SIDES):
        raise ValueError(f"side must be 'both', 'query' or 'gallery', got {side!r}")
    chosen = []
    for name in SIDES if side == "both" else (side,):
        grounding = getattr(context.explanation, name, None)
        if grounding is None:
            if side != "both":
                raise ValueError(f"the explanation has no {name} maps")
            continue
        if grounding.images is None or grounding.references is None:
            raise ValueError(f"the {name} maps hold no images/references to perturb")
        chosen.append((name, grounding))
    if not chosen:
        raise ValueError("the explanation has no maps to perturb")
    return chosen


class Metric:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: True if a larger value means a better (more faithful, better grounded) explanation
    higher_is_better: ClassVar[bool | None] = None

    def __init__(self, **options: Any) -> None:
        self.options = options

    def compute(self, context: MetricContext) -> dict[str, Tensor]:
        """Named ``(P,)`` tensors of per-pair values."""
        raise NotImplementedError

    def summarize(self, values: dict[str, np.ndarray]) -> dict[str, float]:
        """Data-set figures from the per-pair values of all batches (default: means)."""
        return {key: float(np.nanmean(v)) if len(v) else float("nan")
                for key, v in values.items()}
