"""Grounding scores of maps against ground-truth masks (the functions behind the grounding
metric plugins, also used to score phrase maps).

All take maps ``(N, H, W)`` and masks ``(N, K, H, W)`` and return ``(N, K)``, NaN where a mask
is empty (the part is not in the image). See docs/metrics.md, "Grounding metrics".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

#: relative tolerance under which map values count as tied with the maximum
_TIE_RTOL = 1e-6


def _check(maps: Tensor, masks: Tensor) -> tuple[Tensor, Tensor]:
    """Maps ``(N, H*W)`` float and masks ``(N, K, H*W)`` as 0/1 floats (float reductions are
    much faster than boolean ones on CPU)."""
    masks = torch.as_tensor(masks)
    if maps.dim() != 3 or masks.dim() != 4 or masks.shape[0] != maps.shape[0] \
            or masks.shape[-2:] != maps.shape[-2:]:
        raise ValueError(f"expected maps (N, H, W) and masks (N, K, H, W) of the same N, H, W; "
                         f"got {tuple(maps.shape)} and {tuple(masks.shape)}")
    return maps.float().flatten(1), masks.bool().float().flatten(2)


def _absent_to_nan(values: Tensor, masks: Tensor) -> Tensor:
    return values.masked_fill(masks.sum(dim=-1) == 0, float("nan"))


def dilate(masks: Tensor, radius: float) -> Tensor:
    """``(..., H, W)`` masks grown by every pixel within Euclidean distance ``radius`` (pixels)."""
    if radius <= 0:
        return masks
    r = int(math.floor(radius))
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    disk = ((yy ** 2 + xx ** 2) <= radius ** 2).float()[None, None]
    flat = masks.reshape(-1, 1, *masks.shape[-2:]).float()
    return (F.conv2d(flat, disk, padding=r) > 0.5).view(masks.shape)


def pointing_game(maps: Tensor, masks: Tensor, tolerance: float = 0.0) -> Tensor:
    """``(N, K)`` hit of each map's maximum in each mask (grown by ``tolerance`` pixels).

    Ties for the maximum (a constant map, or a grid cell upsampled into several pixels) count
    as the expected hit under a uniformly random choice among them: the share of tied pixels
    inside the mask. A map without information thus scores the mask's area share.
    """
    flat, m = _check(maps, masks)
    hi, lo = flat.max(dim=1).values, flat.min(dim=1).values
    peak = (flat >= (hi - _TIE_RTOL * (hi - lo))[:, None]).float()
    region = m if tolerance <= 0 else \
        dilate(torch.as_tensor(masks).bool(), tolerance).float().flatten(2)
    hits = (region * peak[:, None]).sum(dim=-1) / peak.sum(dim=1, keepdim=True)
    return _absent_to_nan(hits, m)


def energy_pointing_game(maps: Tensor, masks: Tensor, mass: str = "positive") -> Tensor:
    """``(N, K)`` share of the map's mass inside each mask (Score-CAM, Wang et al. 2020).

    ``mass="positive"`` (default): the map clipped at 0, as Score-CAM sums its non-negative
    maps; negative evidence is not "energy" at a place. ``"abs"``: |map|, for signed methods
    whose sign is arbitrary. A map with no mass scores the mask's area share.
    """
    flat, m = _check(maps, masks)
    if mass == "positive":
        weight = flat.clamp_min(0)
    elif mass == "abs":
        weight = flat.abs()
    else:
        raise ValueError(f"mass must be 'positive' or 'abs', got {mass!r}")
    total = weight.sum(dim=1, keepdim=True)
    inside = (m * weight[:, None]).sum(dim=-1)
    share = torch.where(total > 0, inside / total.clamp_min(1e-30), m.mean(dim=-1))
    return _absent_to_nan(share.clamp(0, 1), m)


def top_region_iou(maps: Tensor, masks: Tensor, fraction: float | None = None) -> Tensor:
    """``(N, K)`` IoU of each map's top region with each mask.

    The top region holds the pixels at least as high as the ``k``-th highest, with ``k`` the
    mask's own pixel count (``fraction=None``: a perfect map can reach IoU 1 for a part of any
    size) or ``fraction`` of the image. Ties at the threshold are all included, so a constant
    map's region is the whole image (IoU = area share) whatever the sort order.
    """
    flat, m = _check(maps, masks)
    n_pix = flat.shape[1]
    if fraction is None:
        k = m.sum(dim=-1).long()
    else:
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        k = torch.full(m.shape[:2], max(1, round(fraction * n_pix)), dtype=torch.long)
    ordered = flat.sort(dim=1, descending=True).values
    threshold = ordered.gather(1, (k - 1).clamp(0, n_pix - 1))
    region = (flat[:, None] >= threshold[..., None]).float()
    inter = (region * m).sum(dim=-1)
    union = region.sum(dim=-1) + m.sum(dim=-1) - inter
    return _absent_to_nan(inter / union.clamp_min(1), m)
