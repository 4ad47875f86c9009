"""Image-blind references: the best map that can be drawn without looking at the image.

An explanation map is worth reading only if it says something about *this* image that a map
drawn without it could not. Person crops put the person in the middle, so random maps are a
weak yardstick: a centred blob beats them on every grounding measure. Every figure of
``evaluate`` therefore also stands beside an image-blind reference, and each gets a verdict
(:mod:`.verdicts`).

The reference is one fixed ``(H, W)`` map, the same for every image:

- with part masks of images that are *not* scored (training or validation identities): the
  **location prior**, the mean person mask of one half of those images, raised to a power;
  and centred Gaussians of a few widths. The candidate with the highest person energy on the
  *other* half is the reference. Only energy needs choosing: a power, or a Gaussian's width,
  keeps the order of the map's values, and pointing, top-region IoU, counterfactual masking
  and deletion/insertion depend on that order alone.
- without masks (a user's Market-1501 folder): a centred Gaussian (:func:`centred_prior`).
  Its maps are masked on the same model for the faithfulness figures, like a method's.

Nothing here reads the scored images or their masks: :func:`choose_reference` takes the masks
it may use and nothing else, and records which images those were.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from .grounding_scores import energy_pointing_game

#: powers of the location prior tried on the selection half
PRIOR_POWERS: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0,
                                   64.0)
#: widths (standard deviation / image side) of the centred Gaussians tried
CENTRED_SIGMAS: tuple[float, ...] = (0.1, 0.15, 0.2, 0.3, 0.45)
#: the centred prior used where no masks exist: a broad blob, wider than it is tall in
#: relative terms, since a pedestrian crop is about twice as tall as it is wide
DEFAULT_CENTRED_SIGMA = (0.3, 0.3)


@dataclass(frozen=True)
class ImageBlindReference:
    """One ``(H, W)`` non-negative map used for every image, and how it was chosen."""

    name: str
    prior: Tensor
    #: what it was built from (images, identities, criterion, candidates' scores)
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        prior = torch.as_tensor(self.prior, dtype=torch.float32)
        if prior.dim() != 2 or not torch.isfinite(prior).all() or (prior < 0).any() \
                or float(prior.sum()) <= 0:
            raise InputError(f"reference {self.name!r}: the prior must be a finite, "
                             f"non-negative (H, W) map with some mass, got "
                             f"{tuple(prior.shape)}")
        object.__setattr__(self, "prior", prior)

    def maps(self, n: int, size: tuple[int, int]) -> Tensor:
        """``(n, H, W)``: the prior at ``size`` (bilinear), once per row."""
        prior = self.prior
        if tuple(prior.shape) != tuple(size):
            prior = F.interpolate(prior[None, None], size=tuple(size), mode="bilinear",
                                  align_corners=False)[0, 0].clamp_min(0)
        return prior.expand(n, *prior.shape).clone()

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "size": list(self.prior.shape), **self.info}


def centred_prior(size: tuple[int, int], sigma: float | tuple[float, float] = DEFAULT_CENTRED_SIGMA
                  ) -> ImageBlindReference:
    """A Gaussian at the image centre, ``sigma`` (per axis) as a fraction of the side."""
    sy, sx = (sigma, sigma) if isinstance(sigma, (int, float)) else sigma
    if min(sy, sx) <= 0:
        raise InputError(f"centred prior: sigma must be positive, got {sigma}")
    h, w = int(size[0]), int(size[1])
    y = (torch.arange(h, dtype=torch.float32) + 0.5) / h - 0.5
    x = (torch.arange(w, dtype=torch.float32) + 0.5) / w - 0.5
    prior = torch.exp(-0.5 * ((y[:, None] / sy) ** 2 + (x[None, :] / sx) ** 2))
    return ImageBlindReference(f"centred prior (σ {sy:g}×{sx:g})", prior,
                               {"kind": "centred", "sigma": [sy, sx]})


def person_masks(masks: Tensor | np.ndarray) -> Tensor:
    """``(N, K, H, W)`` part masks -> ``(N, H, W)`` bool person masks (their union)."""
    masks = torch.as_tensor(np.asarray(masks) if not isinstance(masks, Tensor) else masks)
    if masks.dim() != 4:
        raise InputError(f"part masks must be (N, K, H, W), got {tuple(masks.shape)}")
    return masks.bool().any(dim=1)


def location_prior(masks: Tensor | np.ndarray, power: float = 1.0) -> Tensor:
    """``(H, W)``: the share of images whose person covers each pixel, to ``power``."""
    person = person_masks(masks)
    if len(person) == 0:
        raise InputError("the location prior needs at least one mask")
    return person.float().mean(dim=0).pow(float(power))


def _person_energy(prior: Tensor, person: Tensor) -> float:
    """Mean person energy of one prior over ``(N, H, W)`` person masks (images with none
    left out)."""
    maps = prior.expand(len(person), *prior.shape)
    values = energy_pointing_game(maps, person[:, None])[:, 0]
    return float(values.nanmean())


def choose_reference(masks: Tensor | np.ndarray, groups: Sequence[int] | np.ndarray,
                     powers: Sequence[float] = PRIOR_POWERS,
                     sigmas: Sequence[float] = CENTRED_SIGMAS,
                     source: str = "reference images") -> ImageBlindReference:
    """The strongest image-blind reference learnt from ``masks`` of images that are not scored.

    ``groups`` (one per image, e.g. identities) splits the images in two halves by group, so
    no identity is in both: the location prior is the mean person mask of the first half, and
    each candidate (that prior to each of ``powers``; a centred Gaussian of each width in
    ``sigmas``) is scored by person energy on the second half; the best is the reference.
    """
    person = person_masks(masks)
    groups = np.asarray(groups)
    if len(groups) != len(person):
        raise InputError(f"{len(groups)} groups for {len(person)} reference masks")
    distinct = np.unique(groups)
    if len(distinct) < 2:
        raise InputError(f"{source}: choosing a reference needs images of at least two "
                         f"identities (one half builds the prior, the other chooses it), got "
                         f"{len(distinct)}")
    build_groups = distinct[0::2]
    build = torch.as_tensor(np.isin(groups, build_groups))
    if not build.any() or build.all():
        raise InputError(f"{source}: both halves need images")
    mean_mask = person[build].float().mean(dim=0)
    selection = person[~build]
    size = tuple(person.shape[-2:])
    scores: dict[str, float] = {}
    candidates: dict[str, tuple[str, Tensor, dict[str, Any]]] = {}
    for p in powers:
        name = "location prior" if p == 1 else f"location prior^{p:g}"
        prior = mean_mask.pow(float(p))
        if float(prior.sum()) <= 0:
            continue
        candidates[name] = (name, prior, {"kind": "location", "power": float(p)})
    for s in sigmas:
        ref = centred_prior(size, s)
        candidates[ref.name] = (ref.name, ref.prior, dict(ref.info))
    for key, (_, prior, _) in candidates.items():
        scores[key] = _person_energy(prior, selection)
    best = max(scores, key=lambda k: (scores[k], k))
    name, prior, info = candidates[best]
    info |= {"source": source, "images": int(len(person)),
             "prior_images": int(build.sum()), "selection_images": int((~build).sum()),
             "identities": int(len(distinct)), "criterion": "person energy on the selection half",
             "selection_energy": scores[best],
             "candidates": {k: round(v, 4) for k, v in scores.items()}}
    return ImageBlindReference(name, prior, info)
