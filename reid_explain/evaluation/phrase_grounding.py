"""Scoring phrase maps against ground-truth part masks (SynthPedes), and their faithfulness.

Each caption of a split is grounded on its own image (one map per phrase, see
:mod:`reid_explain.grounding`); a phrase whose ``part`` has a mask in that image is scored with
the pointing game and the energy pointing game against that part's mask. The counterfactual
check masks the top-k% cells of the caption's combined phrase map (the mean of its phrase
maps) in the image, against k% random cells, and measures the drop of the caption-image cosine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..maps import GroundingMap
from ..masker import grid_to_pixels
from .bootstrap import bootstrap_ci
from .grounding_scores import energy_pointing_game, pointing_game

if TYPE_CHECKING:
    from ..explainer import Explainer
    from ..training.text_image import TextImageData


def phrase_grounding_scores(explainer: Explainer, data: TextImageData, method: str,
                            ppim: Any = None, max_captions: int | None = None,
                            batch_size: int = 64, **options: Any) -> dict[str, Any]:
    """Mean pointing game and energy pointing game of ``method``'s phrase maps, overall and
    per part, plus the per-phrase values."""

    def maps_of(rows: list[int], image_rows: Tensor) -> list[tuple[list[dict], Tensor | None]]:
        groundings = explainer.ground(data.images[image_rows], [data.captions[r] for r in rows],
                                      method=method, phrases=[data.phrases[r] for r in rows],
                                      ppim=ppim, **options)
        return [(g.phrases, g.maps.upsampled() if len(g) else None) for g in groundings]

    return {"method": method, **_score_phrase_maps(data, maps_of, max_captions, batch_size)}


def location_prior_scores(reference: TextImageData, data: TextImageData,
                          grid: tuple[int, int], max_captions: int | None = None,
                          batch_size: int = 64) -> dict[str, Any]:
    """The same scores for an image-blind reference: each phrase's map is its part's mean mask
    over ``reference`` (the training split), pooled to ``grid`` and upsampled as a model's
    maps are. It needs no model and sees no test image; it uses masks no method trains on.
    What it scores is how much the benchmark rewards knowing *where a part usually is*, the
    level a phrase map must beat to show that it reads the image."""
    if reference.masks is None or tuple(reference.part_names) != tuple(data.part_names):
        raise ValueError("the location prior needs a reference split with part masks of the "
                         "same parts (a SynthPedes split)")
    mean_masks = reference.masks.float().mean(dim=0)  # (K_parts, H, W)
    size = tuple(mean_masks.shape[-2:])
    as_maps = GroundingMap(mean_masks, torch.zeros(len(mean_masks)), "location_prior", size,
                           tuple(grid))
    prior = replace(as_maps, maps=as_maps.on_grid()).upsampled()  # as a model's maps are

    def maps_of(rows: list[int], image_rows: Tensor) -> list[tuple[list[dict], Tensor | None]]:
        out = []
        for r in rows:
            parts = [p.get("part") for p in data.phrases[r]]
            maps = torch.stack([prior[data.part_names.index(p)] if p in data.part_names
                                else torch.zeros(size) for p in parts]) if parts else None
            out.append((data.phrases[r], maps))
        return out

    return {"method": "location_prior", **_score_phrase_maps(data, maps_of, max_captions,
                                                             batch_size)}


def _score_phrase_maps(data: TextImageData, maps_of: Callable, max_captions: int | None,
                       batch_size: int) -> dict[str, Any]:
    """Score each caption's phrase maps (``maps_of(rows, image_rows)`` -> per row its phrases,
    dicts with ``part`` and ``text``, and their ``(K, H, W)`` maps at image size) against the
    parts' masks."""
    if data.masks is None:
        raise ValueError("phrase grounding scores need part masks (a SynthPedes split)")
    n = len(data) if max_captions is None else min(max_captions, len(data))
    records: list[dict[str, Any]] = []
    for start in range(0, n, batch_size):
        rows = list(range(start, min(start + batch_size, n)))
        image_rows = torch.as_tensor(data.caption_image[rows])
        for r, image_row, (phrases, maps) in zip(rows, image_rows.tolist(),
                                                 maps_of(rows, image_rows), strict=True):
            parts = [p.get("part") for p in phrases]
            keep = [i for i, part in enumerate(parts) if part in data.part_names]
            if maps is None or not keep:
                continue
            masks = data.masks[image_row]  # (K_parts, H, W)
            part_masks = torch.stack([masks[data.part_names.index(parts[i])] for i in keep])
            energy = energy_pointing_game(maps[keep], part_masks[:, None])[:, 0]
            pointing = pointing_game(maps[keep], part_masks[:, None])[:, 0]
            for j, i in enumerate(keep):
                records.append({"caption": r, "part": parts[i],
                                "phrase": phrases[i].get("text"),
                                "energy": float(energy[j]), "pointing": float(pointing[j])})
    energy = np.array([r["energy"] for r in records], dtype=np.float64)
    pointing = np.array([r["pointing"] for r in records], dtype=np.float64)
    by_part = {}
    for part in sorted({r["part"] for r in records}):
        sel = [k for k, r in enumerate(records) if r["part"] == part]
        by_part[part] = {"n": len(sel), "energy": float(np.nanmean(energy[sel])),
                         "pointing": float(np.nanmean(pointing[sel]))}
    return {"phrases": len(records),
            "energy": float(np.nanmean(energy)) if len(records) else float("nan"),
            "pointing": float(np.nanmean(pointing)) if len(records) else float("nan"),
            "by_part": by_part, "records": records}


@torch.no_grad()
def _caption_similarity(explainer: Explainer, images: torch.Tensor,
                        text_emb: torch.Tensor) -> torch.Tensor:
    return (explainer.embed(images) * text_emb).sum(dim=1)


def phrase_counterfactual_gap(explainer: Explainer, data: TextImageData, method: str,
                              ppim: Any = None, fraction: float = 0.2, n_random: int = 5,
                              max_captions: int | None = None, seed: int = 0,
                              batch_size: int = 64, **options: Any) -> dict[str, float]:
    """Caption-image cosine drop when the top ``fraction`` cells of the caption's phrase map
    are set to the mean colour, minus the drop for random cells (bootstrap CI over captions)."""
    generator = torch.Generator().manual_seed(seed)
    n = len(data) if max_captions is None else min(max_captions, len(data))
    top_drops, random_drops = [], []
    for start in range(0, n, batch_size):
        rows = list(range(start, min(start + batch_size, n)))
        image_rows = torch.as_tensor(data.caption_image[rows])
        images = data.images[image_rows]
        captions = [data.captions[r] for r in rows]
        groundings = explainer.ground(images, captions, method=method,
                                      phrases=[data.phrases[r] for r in rows], ppim=ppim,
                                      **options)
        keep = [i for i, g in enumerate(groundings) if len(g)]
        if not keep:
            continue
        maps = torch.stack([groundings[i].maps.on_grid().mean(dim=0) for i in keep])
        images = images[keep]
        text_emb = explainer.embed_text([captions[i] for i in keep])
        h, w = maps.shape[-2:]
        k = max(1, round(fraction * h * w))
        top = torch.zeros(len(keep), h * w, dtype=torch.bool)
        top.scatter_(1, maps.flatten(1).argsort(dim=1, descending=True, stable=True)[:, :k],
                     True)
        variants = [top.view(-1, h, w)]
        for _ in range(n_random):
            idx = torch.rand(len(keep), h * w, generator=generator).argsort(dim=1)[:, :k]
            variants.append(torch.zeros(len(keep), h * w, dtype=torch.bool)
                            .scatter_(1, idx, True).view(-1, h, w))
        base = _caption_similarity(explainer, images, text_emb)
        size = tuple(images.shape[-2:])
        masked = torch.cat([images.masked_fill(grid_to_pixels(v, size), 0.0) for v in variants])
        sims = _caption_similarity(explainer, masked, text_emb.repeat(len(variants), 1))
        sims = sims.view(len(variants), len(keep))
        top_drops.append((base - sims[0]).cpu())
        random_drops.append((base[None] - sims[1:]).mean(dim=0).cpu())
    top_drop = torch.cat(top_drops).numpy()
    random_drop = torch.cat(random_drops).numpy()
    ci = bootstrap_ci(top_drop - random_drop, seed=seed)
    return {"top_drop": float(top_drop.mean()), "random_drop": float(random_drop.mean()),
            "gap": ci.estimate, "gap_ci_low": ci.low, "gap_ci_high": ci.high,
            "captions": int(len(top_drop))}
