"""Grounding metrics against hand computations on tiny maps and masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from reid_explain.evaluation.grounding_scores import (
    dilate,
    energy_pointing_game,
    pointing_game,
    top_region_iou,
)
from reid_explain.plugin_api import manager as plugins
from reid_explain.plugin_api.maps import GroundingMap, PairExplanation
from reid_explain.plugin_api.metric import MetricContext
from reid_explain.plugins.metrics.grounding import part_regions

NAN = float("nan")


def mask(shape: tuple[int, int], *cells: tuple[int, int]) -> torch.Tensor:
    m = torch.zeros(shape, dtype=torch.bool)
    for y, x in cells:
        m[y, x] = True
    return m


def assert_values(actual: torch.Tensor, expected: list[list[float]]) -> None:
    np.testing.assert_allclose(actual.numpy(), np.array(expected, dtype=np.float32),
                               rtol=1e-6, atol=1e-6, equal_nan=True)


def test_pointing_game_hit_miss_and_absent_part() -> None:
    maps = torch.zeros(1, 4, 4)
    maps[0, 1, 2] = 5.0
    masks = torch.stack([mask((4, 4), (1, 2), (1, 3)), mask((4, 4), (3, 3)),
                         mask((4, 4))])[None]
    assert_values(pointing_game(maps, masks), [[1.0, 0.0, NAN]])


def test_pointing_game_tolerance_is_euclidean_pixels() -> None:
    maps = torch.zeros(1, 5, 5)
    maps[0, 0, 0] = 1.0
    masks = torch.stack([mask((5, 5), (0, 2)), mask((5, 5), (1, 1))])[None]
    assert_values(pointing_game(maps, masks, tolerance=1), [[0.0, 0.0]])
    assert_values(pointing_game(maps, masks, tolerance=1.5), [[0.0, 1.0]])  # sqrt(2) <= 1.5
    assert_values(pointing_game(maps, masks, tolerance=2), [[1.0, 1.0]])
    grown = dilate(mask((5, 5), (2, 2))[None, None], 1)[0, 0]
    assert grown.sum() == 5 and grown[1, 2] and not grown[1, 1]


def test_pointing_game_ties_score_the_expected_hit() -> None:
    maps = torch.zeros(2, 4, 4)
    maps[1, 0, 0] = maps[1, 3, 3] = 2.0  # two tied maxima, one inside
    masks = mask((4, 4), (0, 0), (0, 1), (1, 0), (1, 1))[None, None].repeat(2, 1, 1, 1)
    # the constant map scores the mask's area share (4 of 16 pixels)
    assert_values(pointing_game(maps, masks), [[0.25], [0.5]])


def test_energy_pointing_game_positive_and_abs_mass() -> None:
    maps = torch.tensor([[[1.0, 2.0], [3.0, -4.0]]])
    masks = torch.stack([mask((2, 2), (0, 0), (0, 1)), mask((2, 2), (1, 1)),
                         mask((2, 2))])[None]
    assert_values(energy_pointing_game(maps, masks), [[3 / 6, 0 / 6, NAN]])
    assert_values(energy_pointing_game(maps, masks, mass="abs"), [[3 / 10, 4 / 10, NAN]])
    # no positive mass: the mask's area share (chance), not 0 or NaN
    assert_values(energy_pointing_game(-maps.abs(), masks), [[0.5, 0.25, NAN]])
    with pytest.raises(ValueError, match="mass"):
        energy_pointing_game(maps, masks, mass="minmax")


def test_top_region_iou_by_mask_area_and_fixed_fraction() -> None:
    maps = torch.arange(8.0).view(1, 2, 4)  # [[0 1 2 3], [4 5 6 7]]
    head = mask((2, 4), (1, 3), (1, 2), (0, 3))  # values 7, 6, 3
    feet = mask((2, 4), (0, 0))
    masks = torch.stack([head, feet, mask((2, 4))])[None]
    # own area: head k=3 -> top {7,6,5}: inter 2, union 4; feet k=1 -> {7}: inter 0
    assert_values(top_region_iou(maps, masks), [[2 / 4, 0.0, NAN]])
    # fraction 0.25 -> k=2 -> {7,6}: head inter 2 union 3; feet inter 0 union 3
    assert_values(top_region_iou(maps, masks, fraction=0.25), [[2 / 3, 0.0, NAN]])
    # a constant map's top region is the whole image: IoU = area share
    assert_values(top_region_iou(torch.ones(1, 2, 4), masks), [[3 / 8, 1 / 8, NAN]])


def test_shape_checks() -> None:
    with pytest.raises(ValueError, match="same N, H, W"):
        pointing_game(torch.zeros(2, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.bool))


def test_part_regions_person_named_parts_and_unions() -> None:
    masks = torch.stack([mask((2, 2), (0, 0)), mask((2, 2), (1, 1)), mask((2, 2))])[None]
    names = ("head", "upper_body", "bag")
    regions, stack = part_regions(masks, names)
    assert regions == ["person"] and stack[0, 0].sum() == 2
    regions, stack = part_regions(masks, names, ["upper_body", "person", "bag"])
    assert regions == ["upper_body", "person", "bag"]
    assert stack[0, 0].equal(masks[0, 1]) and stack[0, 1].sum() == 2 and stack[0, 2].sum() == 0
    regions, stack = part_regions(masks, names, {"top": ["head", "bag"]})
    assert regions == ["top"] and stack[0, 0].equal(masks[0, 0])
    with pytest.raises(ValueError, match="unknown"):
        part_regions(masks, names, ["shoes"])


def _context(maps: torch.Tensor, masks: torch.Tensor, image_size=(4, 4)) -> MetricContext:
    n = len(maps)
    grounding = GroundingMap(maps=maps, scores=torch.zeros(n), method="hand",
                             image_size=image_size, grid_size=tuple(maps.shape[-2:]))
    explanation = PairExplanation(pairs=torch.zeros(n, 2, dtype=torch.long),
                                  scores=torch.zeros(n), method="hand", query=grounding,
                                  gallery=None)
    return MetricContext(explainer=None, explanation=explanation, query_masks=masks,
                         part_names=("head", "upper_body", "bag"))


def _masks() -> torch.Tensor:
    """Two 4x4 images: head top-left, upper body bottom-right; the bag only in image 1."""
    head = mask((4, 4), (0, 0), (0, 1), (1, 0), (1, 1))
    body = mask((4, 4), (2, 2), (2, 3), (3, 2), (3, 3))
    bag = mask((4, 4), (3, 0))
    return torch.stack([torch.stack([head, body, mask((4, 4))]),
                        torch.stack([head, body, bag])])


def test_metric_plugins_on_a_context_upsample_and_key_by_part() -> None:
    grid = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]])
    context = _context(grid, _masks())
    parts = ["person", "head", "bag"]
    values = {}
    for name in ("pointing_game", "energy_pointing_game", "mask_iou"):
        metric = plugins.get("metrics", name).obj(parts=parts)
        assert metric.higher_is_better
        values.update(metric.compute(context))
    assert set(values) == {f"{p}_{s}" for p in [*parts, "mean"]
                           for s in ("pointing", "energy", "iou")}
    up = context.explanation.query.upsampled(size=(4, 4))
    _, regions = part_regions(_masks(), ("head", "upper_body", "bag"), parts)
    expected = energy_pointing_game(up, regions)
    for r, part in enumerate(parts):
        torch.testing.assert_close(values[f"{part}_energy"], expected[:, r], equal_nan=True)
    # image 0 points at the head, image 1 at the upper body; the bag is absent from image 0
    assert_values(values["head_pointing"][None], [[1.0, 0.0]])
    assert_values(values["person_pointing"][None], [[1.0, 1.0]])
    assert math.isnan(values["bag_energy"][0]) and not math.isnan(values["bag_energy"][1])
    # the mean over parts ignores the absent one
    torch.testing.assert_close(values["mean_energy"][0],
                               expected[0, :2].mean())
    summary = plugins.get("metrics", "energy_pointing_game").obj().summarize(
        {"bag_energy": values["bag_energy"].numpy()})
    assert summary["bag_energy"] == pytest.approx(float(values["bag_energy"][1]))


def test_default_region_is_the_person_and_options_reach_the_functions() -> None:
    grid = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 3.0]]])
    context = _context(grid, _masks())
    out = plugins.get("metrics", "mask_iou").obj(fraction=0.5).compute(context)
    assert set(out) == {"person_iou"}
    up = context.explanation.query.upsampled(size=(4, 4))
    _, regions = part_regions(_masks(), ("head", "upper_body", "bag"))
    torch.testing.assert_close(out["person_iou"], top_region_iou(up, regions, 0.5)[:, 0])
    out = plugins.get("metrics", "pointing_game").obj(tolerance=8).compute(context)
    assert_values(out["person_pointing"][None], [[1.0, 1.0]])


def test_gallery_side_and_missing_masks() -> None:
    grid = torch.ones(2, 2, 2)
    context = _context(grid, _masks())
    metric = plugins.get("metrics", "energy_pointing_game").obj(side="gallery")
    with pytest.raises(ValueError, match="no gallery-side maps"):
        metric.compute(context)
    context.explanation.gallery = context.explanation.query
    with pytest.raises(ValueError, match="gallery_masks"):
        metric.compute(context)
    context.gallery_masks = _masks()  # what evaluate() would set for gallery-side grounding
    out = metric.compute(context)
    assert_values(out["person_energy"][None], [[8 / 16, 9 / 16]])  # constant map: area share
    context.query_masks = None
    with pytest.raises(ValueError, match="query_masks"):
        plugins.get("metrics", "pointing_game").obj().compute(context)
