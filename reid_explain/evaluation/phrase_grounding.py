"""Scoring phrase maps against ground-truth part masks (SynthPedes), and their faithfulness.

Each caption of a split is grounded on its own image (one map per phrase, see
:mod:`reid_explain.explain.grounding`); a phrase whose ``part`` has a mask in that image is
scored with the pointing game and the energy pointing game against that part's mask. The
counterfactual check masks the top-k% cells of the caption's combined phrase map (the mean of
its phrase maps) in the image, against k% random cells, and measures the drop of the
caption-image cosine.

Maps are collected once (:func:`collect_phrase_maps`, at each method's own resolution: the
host's patch grid, or pixels for ``relevance_ig``) and scored separately
(:func:`score_phrase_maps`), so that controls built from the same maps (scored on another
image's masks, combined with a prior, sharpened) cost no further forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..plugin_api.maps import pool_to_grid
from ..plugin_api.masker import grid_to_pixels
from .bootstrap import bootstrap_ci
from .grounding_scores import energy_pointing_game, pointing_game

if TYPE_CHECKING:
    from ..plugin_api.interfaces import ExplainerLike
    from ..training.text_image import TextImageData


@dataclass
class PhraseMaps:
    """Per caption row: its phrases and their ``(K, h, w)`` maps, at the method's resolution
    (the patch grid, or the image's pixels); scoring upsamples them to the masks."""

    method: str
    image_size: tuple[int, int]
    rows: list[int] = field(default_factory=list)
    phrases: list[list[dict[str, Any]]] = field(default_factory=list)
    maps: list[Tensor | None] = field(default_factory=list)

    def append(self, row: int, phrases: list[dict[str, Any]], maps: Tensor | None) -> None:
        self.rows.append(row)
        self.phrases.append(phrases)
        self.maps.append(None if maps is None else maps.detach().float().cpu())

    def mapped(self, method: str, fn: Callable[[int, Tensor], Tensor]) -> PhraseMaps:
        """New maps ``fn(position, maps)`` for the same phrases (e.g. combined with a prior)."""
        out = PhraseMaps(method, self.image_size)
        for i, (row, phrases, maps) in enumerate(zip(self.rows, self.phrases, self.maps,
                                                     strict=True)):
            out.append(row, phrases, None if maps is None else fn(i, maps))
        return out


def _caption_rows(data: TextImageData, max_captions: int | None,
                  batch_size: int) -> list[list[int]]:
    n = len(data) if max_captions is None else min(max_captions, len(data))
    return [list(range(s, min(s + batch_size, n))) for s in range(0, n, batch_size)]


def collect_phrase_maps(explainer: ExplainerLike, data: TextImageData, method: str,
                        ppim: Any = None, max_captions: int | None = None,
                        batch_size: int = 64, **options: Any) -> PhraseMaps:
    """``method``'s phrase maps for the first ``max_captions`` captions, each on its image."""
    out = PhraseMaps(method, tuple(data.images.shape[-2:]))
    for rows in _caption_rows(data, max_captions, batch_size):
        image_rows = torch.as_tensor(data.caption_image[rows])
        groundings = explainer.ground(data.images[image_rows], [data.captions[r] for r in rows],
                                      method=method, phrases=[data.phrases[r] for r in rows],
                                      ppim=ppim, **options)
        for r, g in zip(rows, groundings, strict=True):
            # as the method drew them: pooling a pixel-level map to the grid would score it
            # as a coarser method than it is
            out.append(r, g.phrases, g.maps.maps if len(g) else None)
    return out


def prior_grid(reference: TextImageData, grid: tuple[int, int]) -> Tensor:
    """Each part's mean mask over ``reference`` (a training split), pooled to ``grid``."""
    if reference.masks is None:
        raise ValueError("the location prior needs a reference split with part masks "
                         "(a SynthPedes split)")
    mean_masks = reference.masks.float().mean(dim=0)  # (K_parts, H, W)
    return F.adaptive_avg_pool2d(mean_masks[:, None], tuple(grid))[:, 0]


def prior_phrase_maps(reference: TextImageData, data: TextImageData, grid: tuple[int, int],
                      max_captions: int | None = None,
                      power: float | Mapping[str, float] = 1.0,
                      grids: Mapping[str, tuple[int, int]] | None = None) -> PhraseMaps:
    """Image-blind phrase maps: each phrase's map is its part's mean training mask on the grid,
    raised to ``power`` (> 1 sharpens it toward where the part is most often; a mapping gives
    each part its own power). ``grids`` (part -> grid) draws a part on its own grid instead;
    where they differ, every map is drawn at image size, each upsampled as scoring would."""
    if tuple(reference.part_names) != tuple(data.part_names):
        raise ValueError("the location prior needs a reference split with the same parts")
    size = tuple(data.images.shape[-2:])
    part_grid = {p: tuple((grids or {}).get(p, grid)) for p in data.part_names}
    mixed = len(set(part_grid.values())) > 1  # parts on different grids: all at image size
    priors = {g: prior_grid(reference, g) for g in set(part_grid.values())}

    def draw(k: int, part: str) -> Tensor:
        p = float(power.get(part, 1.0)) if isinstance(power, Mapping) else float(power)
        drawn = priors[part_grid[part]][k].pow(p)
        if mixed:
            drawn = F.interpolate(drawn[None, None], size=size, mode="bilinear",
                                  align_corners=False)[0, 0]
        return drawn

    prior = torch.stack([draw(k, p) for k, p in enumerate(data.part_names)])
    grid = tuple(prior.shape[-2:])
    if isinstance(power, Mapping) or mixed:
        name = "location_prior^per-part"
    else:
        name = "location_prior" if power == 1 else f"location_prior^{power:g}"
    out = PhraseMaps(name, tuple(data.images.shape[-2:]))
    n = len(data) if max_captions is None else min(max_captions, len(data))
    for r in range(n):
        parts = [p.get("part") for p in data.phrases[r]]
        maps = torch.stack([prior[data.part_names.index(p)] if p in data.part_names
                            else torch.zeros(tuple(grid)) for p in parts]) if parts else None
        out.append(r, data.phrases[r], maps)
    return out


def _upsampled_cells(grid: tuple[int, int], size: tuple[int, int]) -> Tensor:
    """``(h*w, H, W)``: each grid cell's one-hot map upsampled as every map is scored."""
    h, w = grid
    eye = torch.eye(h * w).view(h * w, 1, h, w)
    return F.interpolate(eye, size=size, mode="bilinear", align_corners=False)[:, 0]


def _maps_from_masks(data: TextImageData, name: str, max_captions: int | None,
                     draw: Callable[[Tensor], Tensor], grid: tuple[int, int]) -> PhraseMaps:
    """Each phrase's map ``draw(its part's true mask)`` on ``grid`` (zeros for a phrase with
    no known part)."""
    if data.masks is None:
        raise ValueError(f"{name} needs part masks (a SynthPedes split)")
    out = PhraseMaps(name, tuple(data.images.shape[-2:]))
    n = len(data) if max_captions is None else min(max_captions, len(data))
    for r in range(n):
        masks = data.masks[int(data.caption_image[r])].float()
        parts = [p.get("part") for p in data.phrases[r]]
        maps = [draw(masks[data.part_names.index(p)]) if p in data.part_names
                else torch.zeros(grid) for p in parts]
        out.append(r, data.phrases[r], torch.stack(maps) if maps else None)
    return out


def best_cell_phrase_maps(data: TextImageData, grid: tuple[int, int],
                          max_captions: int | None = None) -> PhraseMaps:
    """The energy ceiling on ``grid``: each phrase's map is the one cell whose upsampled
    footprint lies most inside its part (energy is a ratio of two linear functions of the map,
    so no map on the grid scores more than its best single cell). A part narrower than a cell
    cannot be reached: bilinear upsampling spreads a cell's mass half a cell beyond it."""
    cells = _upsampled_cells(grid, tuple(data.images.shape[-2:])).flatten(1)  # (C, H*W)
    totals = cells.sum(1)

    def best_cell(mask: Tensor) -> Tensor:
        grid_map = torch.zeros(grid)
        grid_map.view(-1)[int(((cells @ mask.flatten()) / totals).argmax())] = 1.0
        return grid_map

    return _maps_from_masks(data, "best cell (ceiling)", max_captions, best_cell, grid)


def mask_phrase_maps(data: TextImageData, grid: tuple[int, int],
                     max_captions: int | None = None) -> PhraseMaps:
    """Each phrase's map is its own part's true mask pooled to the grid: the part drawn as
    well as the grid can draw it (its energy is below the ceiling: the cells on the part's
    edge spill onto its neighbours when upsampled)."""
    return _maps_from_masks(
        data, "part mask on the grid", max_captions,
        lambda mask: F.adaptive_avg_pool2d(mask[None, None], tuple(grid))[0, 0], grid)


def score_phrase_maps(data: TextImageData, phrase_maps: PhraseMaps,
                      mask_image: Sequence[int] | np.ndarray | None = None) -> dict[str, Any]:
    """Pointing game and energy pointing game of each phrase map against its part's mask.

    Maps are upsampled to image size as :meth:`GroundingMap.upsampled` does. ``mask_image``
    (image row -> image row) scores each caption's maps on *another* image's masks, the
    image-swap control; a phrase whose part that image lacks is skipped. Each record also
    carries ``chance``, the part's area share (the energy of a uniform map).
    """
    if data.masks is None:
        raise ValueError("phrase grounding scores need part masks (a SynthPedes split)")
    records: list[dict[str, Any]] = []
    for r, phrases, grid_maps in zip(phrase_maps.rows, phrase_maps.phrases, phrase_maps.maps,
                                     strict=True):
        parts = [p.get("part") for p in phrases]
        keep = [i for i, part in enumerate(parts) if part in data.part_names]
        if grid_maps is None or not keep:
            continue
        image_row = int(data.caption_image[r])
        if mask_image is not None:
            image_row = int(mask_image[image_row])
        masks = data.masks[image_row]  # (K_parts, H, W)
        part_masks = torch.stack([masks[data.part_names.index(parts[i])] for i in keep])
        if mask_image is not None:  # the other image may lack the part: skip, not score 0
            present = part_masks.flatten(1).any(dim=1)
            keep = [i for i, p in zip(keep, present.tolist(), strict=True) if p]
            part_masks = part_masks[present]
            if not keep:
                continue
        maps = F.interpolate(grid_maps[keep][:, None], size=phrase_maps.image_size,
                             mode="bilinear", align_corners=False)[:, 0]
        energy = energy_pointing_game(maps, part_masks[:, None])[:, 0]
        pointing = pointing_game(maps, part_masks[:, None])[:, 0]
        chance = part_masks.flatten(1).float().mean(dim=1)
        for j, i in enumerate(keep):
            records.append({"caption": r, "part": parts[i], "phrase": phrases[i].get("text"),
                            "energy": float(energy[j]), "pointing": float(pointing[j]),
                            "chance": float(chance[j])})
    return summarise_records(records, phrase_maps.method)


def summarise_records(records: list[dict[str, Any]], method: str) -> dict[str, Any]:
    """Phrase-weighted means, per-part means (with chance) and their unweighted mean."""

    def mean(key: str, sel: list[int] | None = None) -> float:
        values = np.array([records[k][key] for k in (sel if sel is not None
                                                     else range(len(records)))], float)
        return float(np.nanmean(values)) if len(values) else float("nan")

    by_part = {}
    for part in sorted({r["part"] for r in records}):
        sel = [k for k, r in enumerate(records) if r["part"] == part]
        by_part[part] = {"n": len(sel), "energy": mean("energy", sel),
                         "pointing": mean("pointing", sel), "chance": mean("chance", sel)}
    part_mean = {key: float(np.mean([v[key] for v in by_part.values()])) if by_part
                 else float("nan") for key in ("energy", "pointing", "chance")}
    return {"method": method, "phrases": len(records), "energy": mean("energy"),
            "pointing": mean("pointing"), "chance": mean("chance"), "part_mean": part_mean,
            "by_part": by_part, "records": records}


def phrase_grounding_scores(explainer: ExplainerLike, data: TextImageData, method: str,
                            ppim: Any = None, max_captions: int | None = None,
                            batch_size: int = 64, **options: Any) -> dict[str, Any]:
    """Mean pointing game and energy pointing game of ``method``'s phrase maps, overall and
    per part, plus the per-phrase values."""
    return score_phrase_maps(data, collect_phrase_maps(explainer, data, method, ppim,
                                                       max_captions, batch_size, **options))


def location_prior_scores(reference: TextImageData, data: TextImageData,
                          grid: tuple[int, int], max_captions: int | None = None,
                          batch_size: int = 64, power: float = 1.0) -> dict[str, Any]:
    """The same scores for an image-blind reference: each phrase's map is its part's mean mask
    over ``reference`` (the training split), pooled to ``grid`` and upsampled as a model's
    maps are. It needs no model and sees no test image; it uses masks no method trains on.
    What it scores is how much the benchmark rewards knowing *where a part usually is*, the
    level a phrase map must beat to show that it reads the image."""
    return score_phrase_maps(data, prior_phrase_maps(reference, data, grid, max_captions,
                                                     power))


def identity_subset(data: TextImageData, pids: Sequence[int] | np.ndarray) -> TextImageData:
    """The images of identities ``pids`` and their captions (rows renumbered)."""
    from dataclasses import replace as _replace

    keep = np.flatnonzero(np.isin(data.image_pids, np.asarray(pids)))
    new_row = {int(old): new for new, old in enumerate(keep)}
    captions = [c for c in range(len(data)) if int(data.caption_image[c]) in new_row]
    return _replace(data, images=data.images[torch.as_tensor(keep)],
                    image_pids=data.image_pids[keep],
                    captions=[data.captions[c] for c in captions],
                    caption_image=np.array([new_row[int(data.caption_image[c])]
                                            for c in captions], dtype=np.int64),
                    phrases=[data.phrases[c] for c in captions] if data.phrases else [],
                    masks=None if data.masks is None else data.masks[torch.as_tensor(keep)])


def choose_phrase_reference(reference: TextImageData, grid: tuple[int, int],
                            powers: Sequence[float] | None = None,
                            max_captions: int | None = None,
                            resolutions: Sequence[tuple[int, int]] | None = None
                            ) -> dict[str, Any]:
    """The strongest image-blind phrase reference learnt from ``reference`` (validation or
    training identities, never scored): the per-part location prior of half of its identities,
    each part's power chosen by that part's phrase energy on the captions of the other half.
    ``resolutions``: the grids the prior may be drawn on (default: ``grid`` only; e.g. the
    host's grid and the image's pixels), chosen per part with its power the same way.

    Returns ``{"build": TextImageData, "powers": {part: power}, "grids": {part: grid},
    "selection": {part: {power: energy}} (at the part's chosen grid), "resolution_selection":
    {part: {"hxw": best energy}}}``: :func:`prior_phrase_maps` with ``build``, ``powers`` and
    ``grids`` draws the maps."""
    from .references import PRIOR_POWERS

    powers = tuple(powers or PRIOR_POWERS)
    candidates = [tuple(g) for g in (resolutions or (grid,))]
    pids = np.unique(reference.image_pids)
    if len(pids) < 2:
        raise ValueError("choosing the phrase reference needs at least two reference "
                         "identities")
    build, select = identity_subset(reference, pids[0::2]), identity_subset(reference, pids[1::2])
    per_grid: dict[tuple[int, int], dict[str, dict[float, float]]] = {}
    for g in candidates:
        per_power = {p: score_phrase_maps(select, prior_phrase_maps(build, select, g,
                                                                    max_captions, p))["by_part"]
                     for p in powers}
        per_grid[g] = {part: {p: per_power[p][part]["energy"] for p in powers
                              if part in per_power[p]} for part in reference.part_names}
    chosen, grids, selection, by_resolution = {}, {}, {}, {}
    for part in reference.part_names:
        options = [(g, p, e) for g in candidates for p, e in per_grid[g][part].items()]
        if not options:
            continue
        # the highest energy; ties go to the lower power, then to the first resolution given
        g, p, _ = max(options, key=lambda o: (o[2], -o[1], -candidates.index(o[0])))
        chosen[part], grids[part], selection[part] = p, g, per_grid[g][part]
        by_resolution[part] = {f"{h}x{w}": max(per_grid[(h, w)][part].values())
                               for h, w in candidates if per_grid[(h, w)][part]}
    return {"build": build, "powers": chosen, "grids": grids, "selection": selection,
            "resolution_selection": by_resolution,
            "identities": {"build": len(pids[0::2]), "selection": len(pids[1::2])}}


def phrase_verdict(method: dict[str, Any], reference: dict[str, Any], key: str = "energy",
                   seed: int = 0) -> dict[str, Any]:
    """Per-phrase paired ``method - reference`` on ``key`` (both scored on the same phrases):
    the overall mean with its 95% bootstrap CI and verdict, and the same per part."""
    from .verdicts import ci_verdict

    a, b = method["records"], reference["records"]
    if [(r["caption"], r["part"]) for r in a] != [(r["caption"], r["part"]) for r in b]:
        raise ValueError("phrase maps scored on different phrases cannot be paired")
    diff = np.array([x[key] - y[key] for x, y in zip(a, b, strict=True)], dtype=float)
    parts = np.array([r["part"] for r in a])

    def one(values: np.ndarray) -> dict[str, Any]:
        ci = bootstrap_ci(values, seed=seed)
        return {"diff": ci.estimate, "diff_low": ci.low, "diff_high": ci.high, "n": ci.n,
                "beaten": ci_verdict(ci.low, ci.high, True)}

    by_part = {str(p): one(diff[parts == p]) for p in sorted(set(parts.tolist()))}
    return {**one(diff), "by_part": by_part,
            "method": float(np.nanmean([r[key] for r in a])) if a else None,
            "reference": float(np.nanmean([r[key] for r in b])) if b else None,
            "parts_beaten": sum(v["beaten"] is True for v in by_part.values()),
            "parts": len(by_part)}


@torch.no_grad()
def _caption_similarity(explainer: ExplainerLike, images: torch.Tensor,
                        text_emb: torch.Tensor) -> torch.Tensor:
    return (explainer.embed(images) * text_emb).sum(dim=1)


def _random_drops(explainer: ExplainerLike, images: Tensor, text_emb: Tensor, base: Tensor,
                  grid: tuple[int, int], k: int, n_random: int,
                  generator: torch.Generator) -> Tensor:
    """Mean cosine drop over ``n_random`` draws of ``k`` random cells per caption."""
    n, (h, w) = len(images), grid
    variants = []
    for _ in range(n_random):
        idx = torch.rand(n, h * w, generator=generator).argsort(dim=1)[:, :k]
        variants.append(torch.zeros(n, h * w, dtype=torch.bool)
                        .scatter_(1, idx, True).view(-1, h, w))
    size = tuple(images.shape[-2:])
    masked = torch.cat([images.masked_fill(grid_to_pixels(v, size), 0.0) for v in variants])
    sims = _caption_similarity(explainer, masked, text_emb.repeat(n_random, 1))
    return (base[None] - sims.view(n_random, n)).mean(dim=0).cpu()


def maps_counterfactual_gap(explainer: ExplainerLike, data: TextImageData, phrase_maps: PhraseMaps,
                            fraction: float = 0.2, n_random: int = 5, seed: int = 0,
                            batch_size: int = 64, shared: dict | None = None
                            ) -> dict[str, float]:
    """Caption-image cosine drop when the top ``fraction`` cells of each caption's mean phrase
    map are set to 0 (the mean colour), minus the drop for random cells (bootstrap CI over
    captions). Works for any maps, a model's or an image-blind prior's; maps finer than the
    host's patch grid are area-averaged onto it first.

    ``shared``: a dict kept across calls on the same explainer and data. The random cells
    depend only on the captions scored, the grid, ``fraction``, ``n_random`` and ``seed``, not
    on the maps, so several methods' gaps reuse one set of random drops (identical numbers,
    one forward pass of the random variants instead of one per method)."""
    generator = torch.Generator().manual_seed(seed)
    entries = [(r, m) for r, m in zip(phrase_maps.rows, phrase_maps.maps, strict=True)
               if m is not None and len(m)]
    grid = tuple(explainer.adapter.grid_size(tuple(data.images.shape[-2:])))
    key = (tuple(r for r, _ in entries), grid, fraction, n_random, seed, batch_size)
    cached = None if shared is None else shared.get(key)
    computed = []
    top_drops, random_drops = [], []
    for b, start in enumerate(range(0, len(entries), batch_size)):
        chunk = entries[start: start + batch_size]
        rows = [r for r, _ in chunk]
        # maps finer than the grid are area-averaged onto it: every method's top
        # cells are masked at the same granularity
        maps = torch.stack([pool_to_grid(m.mean(dim=0), grid) for _, m in chunk])
        images = data.images[torch.as_tensor(data.caption_image[rows])]
        text_emb = explainer.embed_text([data.captions[r] for r in rows])
        n, (h, w) = len(rows), grid
        k = max(1, round(fraction * h * w))
        top = torch.zeros(n, h * w, dtype=torch.bool)
        top.scatter_(1, maps.flatten(1).argsort(dim=1, descending=True, stable=True)[:, :k],
                     True)
        if cached is not None:
            base, random_drop = cached[b]
        else:
            base = _caption_similarity(explainer, images, text_emb)
            random_drop = _random_drops(explainer, images, text_emb, base, (h, w), k, n_random,
                                        generator)
            computed.append((base, random_drop))
        masked = images.masked_fill(grid_to_pixels(top.view(-1, h, w),
                                                   tuple(images.shape[-2:])), 0.0)
        top_drops.append((base - _caption_similarity(explainer, masked, text_emb)).cpu())
        random_drops.append(random_drop)
    if shared is not None and cached is None:
        shared[key] = computed
    top_drop = torch.cat(top_drops).numpy()
    random_drop = torch.cat(random_drops).numpy()
    ci = bootstrap_ci(top_drop - random_drop, seed=seed)
    return {"top_drop": float(top_drop.mean()), "random_drop": float(random_drop.mean()),
            "gap": ci.estimate, "gap_ci_low": ci.low, "gap_ci_high": ci.high,
            "captions": int(len(top_drop))}


def phrase_counterfactual_gap(explainer: ExplainerLike, data: TextImageData, method: str,
                              ppim: Any = None, fraction: float = 0.2, n_random: int = 5,
                              max_captions: int | None = None, seed: int = 0,
                              batch_size: int = 64, **options: Any) -> dict[str, float]:
    """:func:`maps_counterfactual_gap` of ``method``'s phrase maps."""
    maps = collect_phrase_maps(explainer, data, method, ppim, max_captions, batch_size,
                               **options)
    return maps_counterfactual_gap(explainer, data, maps, fraction, n_random, seed, batch_size)
