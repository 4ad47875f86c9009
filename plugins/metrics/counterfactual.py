"""Counterfactual region masking: does the match break when the explained regions are removed?

For each explained pair, the map on one image (the query by default) picks three cell sets of
the same size on the host's patch grid: its top-k fraction of cells, ``n_random`` random sets,
and its bottom-k fraction. Each set is removed with a masker (mean fill by default) and the
masked image is re-embedded. A faithful map points at what the match rests on: removing its top
cells drops the similarity to the pair's reference far more than removing random cells
(``gap`` = top drop - random drop > 0), and more than removing its bottom cells. With the
retrieval context of ``evaluate`` the metric also re-ranks the unmodified gallery with the
masked image (Market-1501 protocol), giving the pair's new rank, the query's AP and rank-1 hit
after masking, and ΔR@1 / ΔmAP over the query set. ``summarize`` adds a bootstrap confidence
interval over queries for the gap. All masked variants of all pairs go through the host in one
chunked pass (``batch_size`` masked images per forward); the unmasked images are not run again
when ``evaluate`` gives their embeddings (:meth:`MetricContext.embed_masked`). Definitions in
``docs/metrics_counterfactual.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.maps import GroundingMap
from reid_explain.plugin_api.masker import resolve_masker
from reid_explain.plugin_api.metric import Metric, MetricContext

__all__ = [
    "CounterfactualMasking",
    "cell_count",
    "ranked_cell_masks",
    "random_cell_masks",
    "retrieval_stats",
    "summarize_counterfactual",
]

#: masked-variant groups, in the order they are stacked for the one embedding pass
VARIANTS = ("top", "random", "bottom")


def cell_count(fraction: float, total: int) -> int:
    """Cells removed for a fraction ``k`` of ``total``: ``k * total`` rounded half up, in
    ``[1, total]`` (so every variant removes the same, non-zero number of cells)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"k must be in (0, 1], got {fraction}")
    return min(total, max(1, math.floor(fraction * total + 0.5)))


def ranked_cell_masks(maps: Tensor, count: int, highest: bool = True) -> Tensor:
    """``(N, h, w)`` bool: the ``count`` highest (or lowest) cells of each map.

    Ties go to the lower row-major cell index (stable sort), so a constant or partly constant
    map selects a reproducible set.
    """
    flat = maps.detach().float().cpu().flatten(1)
    order = torch.sort(flat, dim=1, descending=highest, stable=True).indices[:, :count]
    return torch.zeros_like(flat, dtype=torch.bool).scatter_(1, order, True).view(maps.shape)


def random_cell_masks(n: int, grid: tuple[int, int], count: int,
                      generator: torch.Generator) -> Tensor:
    """``(n, h, w)`` bool: ``count`` uniformly random cells per row, without replacement."""
    h, w = grid
    idx = torch.rand(n, h * w, generator=generator).argsort(dim=1)[:, :count]
    return torch.zeros(n, h * w, dtype=torch.bool).scatter_(1, idx, True).view(n, h, w)


def retrieval_stats(sims: Tensor, target: Tensor, q_pids: Tensor, q_camids: Tensor,
                    g_pids: Tensor, g_camids: Tensor) -> dict[str, Tensor]:
    """Rank of each row's target item, AP and rank-1 hit, Market-1501 protocol.

    ``sims`` is ``(N, G)`` (one query embedding per row against the gallery). Gallery items with
    the query's pid *and* camera are excluded (junk). ``rank`` = 1 + number of valid items with a
    strictly greater similarity than the target (NaN if the target itself is junk). AP and the
    rank-1 hit use the valid items sorted by similarity, ties broken by gallery index; AP is the
    mean precision at each true match (NaN if the query has no valid true match). Without ties
    both agree with torchreid's ``evaluate_rank``.
    """
    same_pid = g_pids[None].to(sims.device) == q_pids[:, None].to(sims.device)
    same_cam = g_camids[None].to(sims.device) == q_camids[:, None].to(sims.device)
    valid = ~(same_pid & same_cam)
    positive = same_pid & valid
    target = target.to(sims.device).long()[:, None]
    s_target = sims.gather(1, target)
    rank = 1.0 + ((sims > s_target) & valid).sum(dim=1).double()
    rank = rank.masked_fill(~valid.gather(1, target)[:, 0], float("nan"))
    order = torch.sort(sims, dim=1, descending=True, stable=True).indices
    v_sorted, p_sorted = valid.gather(1, order), positive.gather(1, order)
    precision = p_sorted.cumsum(dim=1).double() / v_sorted.cumsum(dim=1).clamp_min(1).double()
    n_pos = p_sorted.sum(dim=1).double()
    ap = (precision * p_sorted).sum(dim=1) / n_pos  # 0/0 -> NaN when no true match
    first_valid = v_sorted.double().argmax(dim=1, keepdim=True)
    r1 = p_sorted.gather(1, first_valid)[:, 0].double()
    r1 = r1.masked_fill(~v_sorted.any(dim=1), float("nan"))
    return {"rank": rank, "ap": ap, "r1": r1}


#: key -> whether a larger value means a more faithful map (keys absent: not a map figure)
ORIENTATION: dict[str, bool] = {
    "top_drop": True, "gap": True, "bottom_drop": False,
    "top_rank": True, "top_ap": False, "top_r1": False,
    "bottom_rank": False, "bottom_ap": True, "bottom_r1": True}


def drop_values(sims: Tensor, drops: Tensor, n_random: int) -> dict[str, Tensor]:
    """Per-pair values from the similarities of the variants (unmasked, top, ``n_random``
    random, bottom) and their drops (top, random..., bottom)."""
    random = drops[1:1 + n_random]
    return {
        "base_sim": sims[0],
        "top_drop": drops[0],
        "random_drop": random.mean(dim=0),
        "random_drop_std": random.std(dim=0) if n_random > 1 else torch.zeros_like(drops[0]),
        "bottom_drop": drops[-1],
        "gap": drops[0] - random.mean(dim=0),
    }


def _nanmean(x: np.ndarray) -> float:
    x = np.asarray(x, dtype=np.float64)
    return float(np.nanmean(x)) if np.isfinite(x).any() else float("nan")


def summarize_counterfactual(values: Mapping[str, np.ndarray], n_boot: int = 2000,
                             confidence: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Data-set figures from per-pair values (keys with or without a ``metric.`` prefix).

    Means of every key; ``gap_mean`` / ``gap_ci_low`` / ``gap_ci_high``, the percentile
    bootstrap interval of the mean gap over queries; when retrieval keys are present,
    ``delta_r1_<v>`` and ``delta_map_<v>`` (mean after - mean before, fractions, over the pairs
    where both are defined) for v in top/random/bottom, and ``ap_gap_*``, the bootstrap
    interval of mean(random AP - top AP).
    """
    v = {key.rsplit(".", 1)[-1]: np.asarray(a, dtype=np.float64).reshape(-1)
         for key, a in values.items()}
    out = {key: _nanmean(a) for key, a in v.items()}

    from reid_explain.evaluation.bootstrap import bootstrap_ci  # lazy: pandas is slow

    def interval(name: str, x: np.ndarray) -> None:
        ci = bootstrap_ci(x, n_boot=n_boot, confidence=confidence, seed=seed)
        out.update({f"{name}_mean": ci.estimate, f"{name}_ci_low": ci.low,
                    f"{name}_ci_high": ci.high})

    if "gap" in v:
        interval("gap", v["gap"])
    for metric, before in (("r1", "r1_before"), ("ap", "ap_before")):
        if before not in v:
            continue
        label = "r1" if metric == "r1" else "map"
        for variant in VARIANTS:
            after = v.get(f"{variant}_{metric}")
            if after is None:
                continue
            both = np.isfinite(after) & np.isfinite(v[before])
            out[f"delta_{label}_{variant}"] = (float(after[both].mean() - v[before][both].mean())
                                               if both.any() else float("nan"))
    if "top_ap" in v and "random_ap" in v:
        interval("ap_gap", v["random_ap"] - v["top_ap"])
    return out


class CounterfactualMasking(Metric):
    """Similarity drop, new rank and ΔR@1/ΔmAP after masking the top-k% cells of the map,
    against k% random cells and the bottom-k% (higher gap = more faithful).

    Options: ``k`` (fraction of grid cells, default 0.2), ``n_random`` (random sets, default 5),
    ``side`` ("query": perturb the query image, the default; "gallery": the gallery image),
    ``masker`` (name or Masker; default the context's, else "mean") and ``masker_options``,
    ``seed`` (random cells; default ``context.seed``), ``batch_size`` (images per host forward,
    default 64); for ``summarize``: ``n_boot`` (2000), ``confidence`` (0.95), ``boot_seed`` (0).
    Per pair: ``base_sim``, ``top_drop``, ``random_drop`` (mean over seeds), ``random_drop_std``,
    ``bottom_drop``, ``gap``; with the retrieval context also ``rank``/``ap``/``r1`` as
    ``<x>_before``, ``top_<x>``, ``random_<x>`` (mean over seeds) and ``bottom_<x>``.
    """

    name = "counterfactual_masking"
    description = ("Counterfactual region masking: drop in similarity and retrieval when the "
                   "top-k% cells are masked, vs random and bottom-k% (bootstrap CI of the gap)")
    higher_is_better = True

    def compute(self, context: MetricContext) -> dict[str, Tensor]:
        side = str(self.options.get("side", "query"))
        if side not in ("query", "gallery"):
            raise ValueError(f"side must be 'query' or 'gallery', got {side!r}")
        grounding: GroundingMap | None = getattr(context.explanation, side)
        if grounding is None or grounding.images is None or grounding.references is None:
            raise ValueError(f"counterfactual_masking needs {side} maps with images and "
                             f"references (explain(..., side='{side}' or 'both'))")
        n_random = int(self.options.get("n_random", 5))
        if n_random < 1:
            raise ValueError(f"n_random must be >= 1, got {n_random}")
        batch_size = int(self.options.get("batch_size", 64))
        seed = int(self.options.get("seed", context.seed))
        masker = resolve_masker(context, self.options.get("masker"),
                                self.options.get("masker_options"))

        grid = grounding.on_grid()
        n_pairs, h, w = grid.shape
        if n_pairs == 0:
            raise ValueError("counterfactual_masking got no pairs")
        count = cell_count(float(self.options.get("k", 0.2)), h * w)
        generator = torch.Generator().manual_seed(seed)
        masks = torch.cat([torch.zeros(n_pairs, h, w, dtype=torch.bool),  # unmasked baseline
                           ranked_cell_masks(grid, count, highest=True)]
                          + [random_cell_masks(n_pairs, (h, w), count, generator)
                             for _ in range(n_random)]
                          + [ranked_cell_masks(grid, count, highest=False)])
        n_variants = n_random + 3
        image_index = torch.arange(n_pairs).repeat(n_variants)
        # one host forward per chunk of masked rows; the unmasked rows (and, with evaluate's
        # context, rows already embedded for another variant) need none
        emb = context.embed_masked(masker, grounding.row_images(), masks, image_index,
                                   [(side, p) for p in range(n_pairs)],
                                   batch_size).view(n_variants, n_pairs, -1)
        refs = F.normalize(grounding.references.float().cpu(), dim=-1)
        sims = (emb * refs[None]).sum(dim=-1)  # (V, P): cosine to the fixed reference
        drops = sims[:1] - sims[1:]
        out = drop_values(sims, drops, n_random)
        if context.gallery_embeddings is not None:
            out.update(self._retrieval(context, side, emb, sims, refs, n_random))
        return out

    def _retrieval(self, context: MetricContext, side: str, emb: Tensor, sims: Tensor,
                   refs: Tensor, n_random: int) -> dict[str, Tensor]:
        """Re-rank the unmodified gallery with each masked variant of each pair."""
        context.require("gallery_pids", "gallery_camids", "query_pids", "query_camids",
                        "gallery_index", metric=self.name)
        gallery = F.normalize(context.gallery_embeddings.float().cpu(), dim=-1)
        target = context.gallery_index.long().cpu()
        labels = (context.query_pids.cpu(), context.query_camids.cpu(),
                  context.gallery_pids.cpu(), context.gallery_camids.cpu())
        if side == "gallery":  # the query is unchanged; the masked item replaces its column
            fixed = refs @ gallery.T
        stats = []
        for v in range(emb.shape[0]):
            if side == "query":
                rows = emb[v] @ gallery.T
            else:
                rows = fixed.scatter(1, target[:, None], sims[v][:, None])
            stats.append(retrieval_stats(rows, target, *labels))
        out: dict[str, Tensor] = {}
        for key in ("rank", "ap", "r1"):
            per_variant = torch.stack([s[key] for s in stats])  # (V, P)
            out[f"{key}_before"] = per_variant[0]
            out[f"top_{key}"] = per_variant[1]
            out[f"random_{key}"] = per_variant[2:2 + n_random].mean(dim=0)
            out[f"bottom_{key}"] = per_variant[-1]
        return out

    def orientation(self, key: str) -> bool | None:
        """A faithful map's top cells drop the match most (``top_drop``, ``gap``, the rank
        after masking them) and its bottom cells least; the unmasked and random-cell values
        do not depend on the map."""
        return ORIENTATION.get(key)

    def summarize(self, values: dict[str, np.ndarray]) -> dict[str, float]:
        return summarize_counterfactual(values, n_boot=int(self.options.get("n_boot", 2000)),
                                        confidence=float(self.options.get("confidence", 0.95)),
                                        seed=int(self.options.get("boot_seed", 0)))


@hookimpl
def register_metrics(register):
    register(CounterfactualMasking)
