"""Grounding against ground-truth part masks: pointing game, energy pointing game, mask IoU.

Faithfulness metrics ask whether the model *uses* the regions a map points at; grounding asks
whether those regions are *where the person (or a named part) is*. That needs masks, which real
ReID data lacks and SynthPedes provides (``MetricContext.query_masks``, ``(P, K, H, W)``).

Each map is upsampled (bilinear, ``GroundingMap.upsampled``) to the masks' size and compared
with one region per requested part: ``"person"`` (the union of all part masks, i.e. the
foreground, the default) or a part name from ``context.part_names`` (``parts=["person",
"upper_body"]``; a dict ``{"torso": ["upper_body", "backpack"]}`` names unions). Keys are
``"<part>_<pointing|energy|iou>"``. A part absent from an image (empty mask) gives NaN, never
0, so that data-set means (``Metric.summarize``, NaN-ignoring) are over images that show it.

No map normalisation is applied: the pointing game and the top-k region depend only on the
order of map values, and the energy share is scale-free. A map that says nothing (constant, or
no positive mass) scores its chance level, the mask's area share, rather than 0 or NaN.
See ``docs/metrics_grounding.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from torch import Tensor

from reid_explain.evaluation.grounding_scores import (
    energy_pointing_game,
    pointing_game,
    top_region_iou,
)
from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.maps import GroundingMap
from reid_explain.plugin_api.metric import Metric, MetricContext

PERSON = "person"
def part_regions(masks: Tensor, part_names: Sequence[str],
                 parts: Sequence[str] | Mapping[str, Sequence[str]] | None = None
                 ) -> tuple[list[str], Tensor]:
    """Region names and ``(N, R, H, W)`` bool masks: ``"person"`` = union of all parts, a part
    name = its mask, a dict entry = the union of the listed parts."""
    masks = torch.as_tensor(masks)
    names = list(part_names) or [f"part{k}" for k in range(masks.shape[1])]
    if len(names) != masks.shape[1]:
        raise ValueError(f"{len(names)} part names for {masks.shape[1]} masks")
    spec: Mapping[str, Sequence[str]]
    if parts is None:
        spec = {PERSON: names}
    elif isinstance(parts, Mapping):
        spec = parts
    else:
        spec = {p: (names if p == PERSON else [p]) for p in ([parts] if isinstance(parts, str)
                                                             else parts)}
    flat = masks.bool().float()  # float reductions are much faster than bool ones on CPU
    regions = []
    for region, listed in spec.items():
        unknown = [p for p in listed if p not in names]
        if unknown or not listed:
            raise ValueError(f"unknown or no part(s) {unknown} for region {region!r}; known: "
                             f"{[PERSON, *names]}")
        idx = torch.tensor([names.index(p) for p in listed], dtype=torch.long)
        regions.append(flat.index_select(1, idx).amax(dim=1) > 0)
    return list(spec), torch.stack(regions, dim=1)


def _side_maps(context: MetricContext, side: str) -> tuple[GroundingMap, Tensor, Sequence[str]]:
    if side not in ("query", "gallery"):
        raise ValueError(f"side must be 'query' or 'gallery', got {side!r}")
    explanation = context.explanation
    grounding = getattr(explanation, side, None)
    if grounding is None and side == "gallery":  # text-to-image: the image is the gallery side
        grounding = getattr(explanation, "image", None)
    if grounding is None:
        raise ValueError(f"the explanation has no {side}-side maps")
    masks = getattr(context, f"{side}_masks", None)
    if masks is None:
        raise ValueError(f"grounding metrics need {side}_masks (P, K, H, W): run them through "
                         "evaluate() on a data set with part masks, e.g. SynthPedes")
    return grounding, torch.as_tensor(masks), getattr(context, "part_names", ())


class GroundingMetric(Metric):
    """Shared plumbing: maps at mask size vs one region per requested part.

    Options: ``parts`` (default ``["person"]``), ``side`` (``"query"``, default, needs
    ``context.query_masks``; ``"gallery"`` needs ``context.gallery_masks``).
    """

    higher_is_better = True
    #: key suffix of this metric's values
    short: ClassVar[str] = ""

    def score(self, maps: Tensor, masks: Tensor) -> Tensor:
        """``(N, R)`` values of maps ``(N, H, W)`` against region masks ``(N, R, H, W)``."""
        raise NotImplementedError

    def compute(self, context: MetricContext) -> dict[str, Tensor]:
        grounding, masks, part_names = _side_maps(context, self.options.get("side", "query"))
        if masks.shape[0] != len(grounding):
            raise ValueError(f"{masks.shape[0]} mask stacks for {len(grounding)} maps")
        names, regions = part_regions(masks, part_names, self.options.get("parts"))
        maps = grounding.upsampled(size=tuple(regions.shape[-2:])).detach().cpu()
        values = self.score(maps, regions)
        out = {f"{name}_{self.short}": values[:, r] for r, name in enumerate(names)}
        if len(names) > 1:
            out[f"mean_{self.short}"] = values.nanmean(dim=1)
        return out


class PointingGame(GroundingMetric):
    """Share of maps whose maximum lies in the part mask (Zhang et al. 2016); ``tolerance``
    in mask pixels, default 0."""

    name = "pointing_game"
    short = "pointing"

    def score(self, maps: Tensor, masks: Tensor) -> Tensor:
        return pointing_game(maps, masks, float(self.options.get("tolerance", 0.0)))


class EnergyPointingGame(GroundingMetric):
    """Share of the map's positive mass inside the part mask (Score-CAM's energy-based
    pointing game); ``mass="abs"`` for |map|."""

    name = "energy_pointing_game"
    short = "energy"

    def score(self, maps: Tensor, masks: Tensor) -> Tensor:
        return energy_pointing_game(maps, masks, str(self.options.get("mass", "positive")))


class MaskIoU(GroundingMetric):
    """IoU of the map's top region with the part mask; the region has the mask's own area
    unless ``fraction`` fixes it."""

    name = "mask_iou"
    short = "iou"

    def score(self, maps: Tensor, masks: Tensor) -> Tensor:
        fraction = self.options.get("fraction")
        return top_region_iou(maps, masks, None if fraction is None else float(fraction))


@hookimpl
def register_metrics(register):
    register(PointingGame)
    register(EnergyPointingGame)
    register(MaskIoU)
