"""Perturbation curves: how the match score falls (or rises) as cells are removed in map order.

``deletion`` and ``insertion`` are RISE's curves (Petsiuk et al. 2018); ``positive_perturbation``
and ``negative_perturbation`` are Chefer et al.'s (2021). For each explained image the grid
cells are ranked by map value (a stable sort: ties go in raster order), and at each step
fraction ``f`` the first ``k = floor(f * n + 1/2)`` ranked cells of the ``n`` are removed
(deletion, positive: most relevant first; negative: least relevant first), or all cells but
them are removed (insertion: revealed from a fully removed start). The curve value is the
cosine similarity of the perturbed image's embedding to the pair's fixed reference embedding,
and the AUC is the trapezoid rule over the step fractions. Removal is a masker plugin
(``masker="mean"``, ``"blur"``, ``"noise"``, ``"token_drop"``).

All steps of all explained images (both sides of the pair) are one batch of rows, embedded in
chunks of ``batch_size``: one host forward per chunk, not one per step per image. Steps that
remove nothing are the unmodified images, whose embeddings ``evaluate`` already has; steps equal
for every map (deletion's 100 %, insertion's 0 %) are embedded once per batch of queries, not
again for the random-map baseline
(:meth:`~reid_explain.plugin_api.metric.MetricContext.embed_masked`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.maps import GroundingMap
from reid_explain.plugin_api.masker import Masker, resolve_masker
from reid_explain.plugin_api.metric import Metric, MetricContext, perturbable_sides

if TYPE_CHECKING:
    from reid_explain.plugin_api.interfaces import ExplainerLike

#: RISE: 0%, 10%, ..., 100%
CURVE_STEPS: tuple[float, ...] = tuple(i / 10 for i in range(11))
#: Chefer et al.: 0% (unperturbed), 10%, ..., 90%
PERTURBATION_STEPS: tuple[float, ...] = tuple(i / 10 for i in range(10))
SIDES = ("query", "gallery")


def check_steps(steps: Sequence[float]) -> Tensor:
    """Step fractions as a float64 tensor: at least two, increasing, inside [0, 1]."""
    fractions = torch.as_tensor([float(s) for s in steps], dtype=torch.float64)
    if fractions.numel() < 2 or (fractions[1:] <= fractions[:-1]).any():
        raise ValueError(f"steps must be at least two increasing fractions, got {list(steps)}")
    if fractions[0] < 0 or fractions[-1] > 1:
        raise ValueError(f"steps must lie in [0, 1], got {list(steps)}")
    return fractions


def cell_ranks(maps: Tensor, most_relevant_first: bool = True) -> Tensor:
    """``(N, h*w)`` long: each cell's position in the removal order (0 = removed first).

    Stable sort, so equal map values are removed in raster order whichever way the order runs.
    """
    flat = maps.flatten(1).float()
    order = torch.sort(flat, dim=1, descending=most_relevant_first, stable=True).indices
    positions = torch.arange(flat.shape[1]).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, positions)


def cells_at(fractions: Tensor, n_cells: int) -> list[int]:
    """Cells removed at each step fraction: ``floor(f * n + 1/2)`` (round half up)."""
    return [int(torch.floor(f * n_cells + 0.5)) for f in fractions]


def step_masks(maps: Tensor, fractions: Tensor, most_relevant_first: bool = True,
               reveal: bool = False) -> Tensor:
    """``(S, N, h, w)`` bool, True = removed: the first ``k`` ranked cells at each step, or,
    with ``reveal``, every cell but those."""
    ranks = cell_ranks(maps, most_relevant_first)
    counts = torch.tensor(cells_at(fractions, ranks.shape[1]))
    removed = ranks[None] < counts[:, None, None]
    if reveal:
        removed = ~removed
    return removed.view(len(counts), *maps.shape)


def trapezoid_auc(fractions: Tensor, curves: Tensor) -> Tensor:
    """Area under ``(S, N)`` curves over the step fractions, trapezoid rule, float64."""
    return torch.trapezoid(curves.double(), x=fractions.double(), dim=0)


def masked_scores(explainer: ExplainerLike, masker: Masker, images: Tensor, masks: Tensor,
                  image_index: Tensor, references: Tensor, batch_size: int) -> Tensor:
    """Cosine of each row's masked image to its reference; rows are ``(mask, image)`` pairs
    with ``image_index`` into ``images``/``references``, one masker call per chunk (every row
    embedded; the metrics go through ``MetricContext.embed_masked``, which skips known rows)."""
    references = F.normalize(references.float(), dim=-1)
    device = explainer.adapter.device
    out = []
    for rows in torch.arange(len(masks)).split(batch_size):
        idx = image_index[rows]
        emb = masker.embed(explainer, images[idx].to(device), masks[rows].to(device),
                           batch_size=len(rows))
        out.append((emb.float().cpu() * references[idx]).sum(dim=-1))
    return torch.cat(out)


class PerturbationCurve(Metric):
    """Shared body of the four curves; subclasses set the order, direction and steps.

    Options: ``steps`` (fractions), ``side`` (``"both"``, ``"query"``, ``"gallery"``),
    ``masker`` (name or Masker; default the context's, else ``"mean"``), ``masker_options``,
    ``batch_size`` (rows per host forward, default 64), ``curve`` (also return the points,
    default True).
    """

    most_relevant_first: ClassVar[bool] = True
    reveal: ClassVar[bool] = False
    default_steps: ClassVar[tuple[float, ...]] = CURVE_STEPS

    def _sides(self, context: MetricContext) -> list[tuple[str, GroundingMap]]:
        return perturbable_sides(context, self.options.get("side", "both"))

    def compute(self, context: MetricContext) -> dict[str, Tensor]:
        fractions = check_steps(self.options.get("steps", self.default_steps))
        masker = resolve_masker(context, self.options.get("masker"),
                                self.options.get("masker_options"))
        batch_size = int(self.options.get("batch_size", 64))
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sides = self._sides(context)
        # sides whose images and grids agree share one batch of rows
        groups: dict[tuple, list[tuple[str, GroundingMap]]] = {}
        for name, grounding in sides:
            key = (tuple(grounding.images.shape[1:]), tuple(grounding.on_grid().shape[1:]))
            groups.setdefault(key, []).append((name, grounding))
        curves: dict[str, Tensor] = {}
        for members in groups.values():
            images = torch.cat([g.row_images() for _, g in members])
            references = torch.cat([g.references for _, g in members])
            maps = torch.cat([g.on_grid() for _, g in members])
            masks = step_masks(maps, fractions, self.most_relevant_first, self.reveal)
            n_steps, n_images = masks.shape[:2]
            index = torch.arange(n_images).repeat(n_steps)  # step-major rows
            origins = [(name, p) for name, g in members for p in range(len(g))]
            emb = context.embed_masked(masker, images, masks.flatten(0, 1), index, origins,
                                       batch_size)
            references = F.normalize(references.float(), dim=-1)
            scores = (emb * references[index]).sum(dim=-1).view(n_steps, n_images)
            start = 0
            for name, grounding in members:
                curves[name] = scores[:, start:start + len(grounding)]
                start += len(grounding)
        out: dict[str, Tensor] = {}
        for name, _ in sides:
            out[f"{name}_auc"] = trapezoid_auc(fractions, curves[name]).float()
        if self.options.get("curve", True):
            for name, _ in sides:
                for s, f in enumerate(fractions.tolist()):
                    out[f"{name}_curve_{f:g}"] = curves[name][s].float()
        return out


class Deletion(PerturbationCurve):
    """RISE deletion: score as the most relevant cells are removed, 0%..100% (lower AUC is
    better)."""

    name = "deletion"
    higher_is_better = False


class Insertion(PerturbationCurve):
    """RISE insertion: score as the most relevant cells are revealed on a fully removed image,
    0%..100% (higher AUC is better)."""

    name = "insertion"
    higher_is_better = True
    reveal = True


class PositivePerturbation(PerturbationCurve):
    """Chefer et al.: score as the most relevant cells are removed, 0%..90% (lower AUC is
    better)."""

    name = "positive_perturbation"
    higher_is_better = False
    default_steps = PERTURBATION_STEPS


class NegativePerturbation(PerturbationCurve):
    """Chefer et al.: score as the least relevant cells are removed, 0%..90% (higher AUC is
    better)."""

    name = "negative_perturbation"
    higher_is_better = True
    most_relevant_first = False
    default_steps = PERTURBATION_STEPS


@hookimpl
def register_metrics(register):
    for metric in (Deletion, Insertion, PositivePerturbation, NegativePerturbation):
        register(metric)
