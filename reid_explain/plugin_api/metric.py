"""The Metric base class: a score of how good an explanation is.

A metric receives a :class:`MetricContext` (the explainer, to run the host on perturbed inputs;
the explanation; and, when evaluating on a data set, the retrieval context and ground-truth
masks) and returns named per-pair values. ``summarize`` turns those into data-set figures (by
default the mean of each). Metrics are plugins, used by name:
``explainer.score(explanation, metrics=["name"])`` or ``explainer.evaluate(..., metrics=[...])``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import torch
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
    #: side -> ``(P, D)`` L2-normalised embeddings of that side's unmodified images, row ``p``
    #: for pair ``p`` (set by ``evaluate``, which embedded them already): perturbation metrics
    #: take the rows that remove nothing from here instead of embedding the images again
    embeddings: dict[str, Tensor] | None = None
    #: embeddings of masked images already computed for these pairs, shared by the contexts of
    #: one batch's variants (the method's maps and the random baseline); see :meth:`embed_masked`
    masked_cache: dict[Any, Tensor] | None = None

    def require(self, *fields: str, metric: str = "this metric") -> None:
        missing = [f for f in fields if getattr(self, f) is None]
        if missing:
            raise ValueError(f"{metric} needs {missing}: run it through evaluate() on a data set"
                             " that provides them")

    def embed_masked(self, masker: Masker, images: Tensor, masks: Tensor, image_index: Tensor,
                     origins: Sequence[tuple[str, int]], batch_size: int = 64) -> Tensor:
        """``(N, D)`` L2-normalised CPU embeddings of ``masker`` applied to the rows
        ``(images[image_index[n]], masks[n])``; ``origins[i]`` says which image ``images[i]``
        is: ``(side, p)``, the ``side`` image of pair ``p`` of the explanation.

        Only rows that need the host go through it, in chunks of ``batch_size`` (one masker
        call, so one host forward, per chunk): a row whose mask removes nothing is the
        unmodified image, taken from :attr:`embeddings` when ``evaluate`` gave them; with a
        deterministic masker (``Masker.deterministic``), a row whose image and mask were already
        embedded (for another variant of these pairs, in :attr:`masked_cache`, or for another
        row of this call: one gallery image matched by two queries) is not embedded again.
        """
        n = len(masks)
        if n == 0:
            raise ValueError("embed_masked got no rows")
        if len(origins) != len(images):
            raise ValueError(f"{len(origins)} origins for {len(images)} images")
        image_index = image_index.long().cpu()
        out: list[Tensor | None] = [None] * n
        if self.embeddings is not None:
            empty = (~masks.flatten(1).any(dim=1)).cpu().nonzero().flatten().tolist()
            for row in empty:
                side, pair = origins[int(image_index[row])]
                known = self.embeddings.get(side)
                if known is not None:
                    out[row] = known[pair].float().cpu()
        cache = self.masked_cache if getattr(masker, "deterministic", False) else None
        keys: dict[int, Any] = {}  # row -> its cache key, for the rows run through the host
        first: dict[Any, int] = {}  # cache key -> the row of this call that computes it
        copies: dict[int, list[int]] = {}  # that row -> rows of this call equal to it
        todo = []
        tag = masker_key(masker) if cache is not None else None
        flat = masks.flatten(1).cpu().numpy() if cache is not None else None
        for row in range(n):
            if out[row] is not None:
                continue
            if cache is not None:
                key = (*self._identity(*origins[int(image_index[row])]), tag,
                       flat[row].tobytes())
                if key in cache:
                    out[row] = cache[key]
                    continue
                if key in first:
                    copies.setdefault(first[key], []).append(row)
                    continue
                first[key] = row
                keys[row] = key
            todo.append(row)
        device = self.explainer.adapter.device
        for rows in torch.tensor(todo, dtype=torch.long).split(batch_size) if todo else ():
            emb = masker.embed(self.explainer, images[image_index[rows]].to(device),
                               masks[rows.to(masks.device)].to(device),
                               batch_size=len(rows)).float().cpu()
            for row, e in zip(rows.tolist(), emb, strict=True):
                out[row] = e
                for other in copies.get(row, ()):
                    out[other] = e
                if cache is not None:
                    cache[keys[row]] = e
        return torch.stack(out)  # type: ignore[arg-type]

    def _identity(self, side: str, pair: int) -> tuple[str, int]:
        """Which image the ``side`` image of pair ``pair`` is: the gallery item's index when
        ``gallery_index`` says it (two queries may match one gallery image), else the pair's."""
        if side == "gallery" and self.gallery_index is not None:
            return side, int(self.gallery_index[pair])
        return side, pair


def masker_key(masker: Masker) -> tuple[str, str]:
    """What identifies a masker's output for given inputs: its class and options."""
    cls = type(masker)
    options = sorted((str(k), repr(v)) for k, v in masker.options.items())
    return f"{cls.__module__}.{cls.__qualname__}", repr(options)


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

    def orientation(self, key: str) -> bool | None:
        """Whether a larger ``key`` value means a better map: True/False for a figure of the
        map's quality, None for a value that is not one (a curve point, a value the map does
        not change). ``evaluate`` compares each figure with random maps and the image-blind
        reference (:mod:`reid_explain.evaluation.verdicts`) and gives it a verdict."""
        return None if "_curve_" in key else self.higher_is_better

    def summarize(self, values: dict[str, np.ndarray]) -> dict[str, float]:
        """Data-set figures from the per-pair values of all batches (default: means)."""
        return {key: float(np.nanmean(v)) if len(v) else float("nan")
                for key, v in values.items()}
