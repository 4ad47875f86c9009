"""Similarity drop when the most relevant patches are masked, against random patches.

For each explained image, the top ``fraction`` of patches by map value are replaced by ``fill``
(0 = the mean colour for normalised inputs) and the cosine to the fixed reference embedding is
recomputed; the same is done for ``n_random`` random patch sets of the same size. A faithful map
points at patches the score depends on: its drop exceeds the random drop (``gap`` > 0). All
masked variants of all pairs go through the host in one batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.maps import GroundingMap
from reid_explain.plugin_api.metric import Metric, MetricContext


def top_patch_masks(maps: Tensor, fraction: float) -> Tensor:
    """``(N, h, w)`` bool: the ``ceil(fraction * h * w)`` highest cells of each map."""
    flat = maps.flatten(1)
    k = max(1, int(round(fraction * flat.shape[1])))
    idx = flat.topk(k, dim=1).indices
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True).view_as(maps)


def random_patch_masks(shape: tuple[int, int, int], fraction: float,
                       generator: torch.Generator) -> Tensor:
    n, h, w = shape
    k = max(1, int(round(fraction * h * w)))
    idx = torch.rand(n, h * w, generator=generator).argsort(dim=1)[:, :k]
    return torch.zeros(n, h * w, dtype=torch.bool).scatter_(1, idx, True).view(n, h, w)


def apply_patch_masks(images: Tensor, masks: Tensor, fill: float = 0.0) -> Tensor:
    """Fill the pixels of masked grid cells (grid masks upsampled nearest to image size)."""
    pixel = F.interpolate(masks[:, None].float(), size=images.shape[-2:], mode="nearest") > 0.5
    return images.masked_fill(pixel, fill)


class MaskingDrop(Metric):
    """Similarity drop after masking the top patches, vs random patches (higher gap = better)."""

    name = "masking_drop"
    higher_is_better = True

    def orientation(self, key: str) -> bool | None:
        """The random-patch drop does not depend on the map."""
        return None if key.endswith("_random") else True

    def compute(self, context: MetricContext) -> dict[str, Tensor]:
        explainer, explanation = context.explainer, context.explanation
        fraction = float(self.options.get("fraction", 0.2))
        n_random = int(self.options.get("n_random", 3))
        fill = float(self.options.get("fill", 0.0))
        generator = torch.Generator().manual_seed(int(self.options.get("seed", 0)))
        out: dict[str, Tensor] = {}
        for side in ("query", "gallery"):
            grounding: GroundingMap | None = getattr(explanation, side, None)
            if grounding is None:
                continue
            if grounding.images is None or grounding.references is None:
                raise ValueError(f"the {side} maps hold no images/references to perturb")
            grid = grounding.on_grid()
            n = len(grounding)
            masks = [top_patch_masks(grid, fraction)]
            masks += [random_patch_masks(tuple(grid.shape), fraction, generator)
                      for _ in range(n_random)]
            masked = torch.cat([apply_patch_masks(grounding.row_images(), m, fill) for m in masks])
            emb = explainer.embed(masked)
            refs = F.normalize(grounding.references.float(), dim=-1).repeat(1 + n_random, 1)
            sims = (emb.cpu() * refs).sum(dim=1).view(1 + n_random, n)
            drops = grounding.scores.float()[None] - sims
            out[f"{side}_top"] = drops[0]
            out[f"{side}_random"] = drops[1:].mean(dim=0)
            out[f"{side}_gap"] = drops[0] - drops[1:].mean(dim=0)
        return out


@hookimpl
def register_metrics(register):
    register(MaskingDrop)
