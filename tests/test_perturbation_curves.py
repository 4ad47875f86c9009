"""Perturbation curves (deletion, insertion, Chefer's positive/negative perturbation) and the
Captum wrappers, on a toy host whose score is a known function of one region."""

from __future__ import annotations

import importlib
import math

import captum.metrics
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerGradCam
from conftest import images, make_plain, make_timm_vit
from torch import Tensor, nn

from reid_explain import GroundingMap, PairExplanation, PluginError, explainify
from reid_explain.plugin_api.manager import get
from reid_explain.plugin_api.metric import MetricContext

# by import_module: ruff sorts the mapped package reid_explain.plugins differently depending
# on the paths it is run on
curves = importlib.import_module("reid_explain.plugins.metrics.perturbation_curves")
cell_ranks, cells_at, step_masks = curves.cell_ranks, curves.cells_at, curves.step_masks

GRID = (4, 4)
REGION = [(0, 1), (1, 1), (2, 2), (3, 0)]  # the cells the toy score depends on
VALUES = [1.5, 1.0, 0.75, 0.5]  # pixel value in each region cell (all channels)
STEPS = [i / 10 for i in range(11)]


class RegionSum(nn.Module):
    """Embedding ``[s, 1]`` with ``s`` the sum over region R of the cells' mean pixel value.

    Against the reference ``[1, 0]`` the cosine is ``s / sqrt(s^2 + 1)``; the mean masker
    (fill 0) removes a cell's term from ``s`` and nothing else, so every step of a curve is
    known in closed form.
    """

    def __init__(self) -> None:
        super().__init__()
        self.cells = nn.AvgPool2d(4)  # 16x16 image -> 4x4 grid of cell means
        region = torch.zeros(GRID)
        for r, c in REGION:
            region[r, c] = 1.0
        self.register_buffer("region", region)

    def forward(self, x: Tensor) -> Tensor:
        s = (self.cells(x).mean(dim=1) * self.region).sum(dim=(1, 2))
        return torch.stack([s, torch.ones_like(s)], dim=1)


def toy_image(seed: int = 0) -> Tensor:
    x = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
    for (r, c), v in zip(REGION, VALUES, strict=True):
        x[..., 4 * r: 4 * r + 4, 4 * c: 4 * c + 4] = v
    return x


def true_map() -> Tensor:
    """Region cells first, in decreasing value; the rest below them."""
    m = torch.rand(1, *GRID, generator=torch.Generator().manual_seed(1))
    for (r, c), v in zip(REGION, VALUES, strict=True):
        m[0, r, c] = 10 + v
    return m


def explanation(maps: Tensor, image: Tensor, gallery: bool = False) -> PairExplanation:
    n = len(maps)
    refs = torch.tensor([[1.0, 0.0]]).repeat(n, 1)
    grounding = GroundingMap(maps=maps, scores=torch.zeros(n), method="manual",
                             image_size=(16, 16), grid_size=GRID, images=image, references=refs)
    return PairExplanation(pairs=torch.zeros(n, 2, dtype=torch.long), scores=torch.zeros(n),
                           method="manual", query=grounding, gallery=grounding if gallery else None)


def cos(s: float) -> float:
    return s / math.sqrt(s * s + 1)


def hand_curve(fractions: list[float], ranks: list[int], insertion: bool = False
               ) -> list[float]:
    """Score at each step, from the closed form: region cell ``i`` is removed once ``k``
    exceeds ``ranks[i]`` (its place in the removal order); other cells do not move the score."""
    n = GRID[0] * GRID[1]
    values = []
    for f in fractions:
        k = math.floor(f * n + 0.5)
        kept = [v for v, rank in zip(VALUES, ranks, strict=True) if (rank < k) == insertion]
        values.append(cos(sum(kept)))
    return values


def region_ranks(maps: Tensor, descending: bool = True) -> list[int]:
    """Removal positions of the region cells: sort by value, ties in raster order."""
    flat = maps.flatten().tolist()
    sign = -1 if descending else 1
    order = sorted(range(len(flat)), key=lambda i: (sign * flat[i], i))
    return [order.index(r * GRID[1] + c) for r, c in REGION]


def trapezoid(xs: list[float], ys: list[float]) -> float:
    return sum((xs[i + 1] - xs[i]) * (ys[i] + ys[i + 1]) / 2 for i in range(len(xs) - 1))


@pytest.fixture
def toy():
    with explainify(RegionSum().eval(), layer="cells") as exp:
        yield exp


def test_step_counts_and_stable_ties():
    assert cells_at(torch.tensor(STEPS, dtype=torch.float64), 16) == \
        [0, 2, 3, 5, 6, 8, 10, 11, 13, 14, 16]
    flat = torch.tensor([[0.5, 1.0, 0.5, 1.0, 0.0]])
    assert cell_ranks(flat[:, None], True).tolist() == [[2, 0, 3, 1, 4]]
    assert cell_ranks(flat[:, None], False).tolist() == [[1, 3, 2, 4, 0]]
    constant = torch.zeros(1, 2, 2)
    masks = step_masks(constant, torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64))
    assert masks.flatten(2).tolist() == [[[False] * 4], [[True, True, False, False]],
                                         [[True] * 4]]


def test_deletion_auc_of_the_toy_is_exact(toy):
    image = toy_image()
    out = toy.score(explanation(true_map(), image), ["deletion"])
    assert region_ranks(true_map()) == [0, 1, 2, 3]
    expected = hand_curve(STEPS, [0, 1, 2, 3])
    auc = trapezoid(STEPS, expected)
    assert auc == pytest.approx(0.1711200, abs=1e-6)  # 0.1 * (0.966235/2 + 0.780869 + 0.447214)
    assert abs(float(out["deletion.query_auc"][0]) - auc) <= 1e-6
    for f, value in zip(STEPS, expected, strict=True):
        assert abs(float(out[f"deletion.query_curve_{f:g}"][0]) - value) <= 1e-6
    assert "deletion.gallery_auc" not in out

    random_map = torch.rand(1, *GRID, generator=torch.Generator().manual_seed(2))
    random_out = toy.score(explanation(random_map, image), ["deletion"])
    hand = hand_curve(STEPS, region_ranks(random_map))
    random_auc = float(random_out["deletion.query_auc"][0])
    assert abs(random_auc - trapezoid(STEPS, hand)) <= 1e-6
    assert random_auc > auc + 0.1


def test_insertion_is_the_mirror(toy):
    image = toy_image()
    out = toy.score(explanation(true_map(), image), ["insertion"])
    expected = hand_curve(STEPS, [0, 1, 2, 3], insertion=True)
    assert expected[0] == 0.0 and expected[-1] == pytest.approx(cos(sum(VALUES)))
    assert abs(float(out["insertion.query_auc"][0]) - trapezoid(STEPS, expected)) <= 1e-6
    reverse = -true_map()  # region cells revealed last
    worse = toy.score(explanation(reverse, image), ["insertion"])
    assert float(worse["insertion.query_auc"][0]) < float(out["insertion.query_auc"][0]) - 0.3


def test_positive_and_negative_perturbation(toy):
    image, maps = toy_image(), true_map()
    out = toy.score(explanation(maps, image), ["positive_perturbation", "negative_perturbation"])
    steps = [i / 10 for i in range(10)]
    positive = hand_curve(steps, [0, 1, 2, 3])
    assert abs(float(out["positive_perturbation.query_auc"][0])
                - trapezoid(steps, positive)) <= 1e-6
    # least relevant first: the region goes last (ranks 12..15, smallest value first), so
    # only 80% (k = 13) and 90% (k = 14) touch it
    assert region_ranks(maps, descending=False) == [15, 14, 13, 12]
    negative = hand_curve(steps, [15, 14, 13, 12])
    assert negative == [cos(3.75)] * 8 + [cos(3.25), cos(2.5)]
    assert abs(float(out["negative_perturbation.query_auc"][0])
                - trapezoid(steps, negative)) <= 1e-6
    assert "positive_perturbation.query_curve_1" not in out
    assert out["positive_perturbation.query_auc"] < out["negative_perturbation.query_auc"]


def test_curves_are_batched_one_forward_per_chunk(toy):
    model = toy.model
    imgs = torch.cat([toy_image(s) for s in range(3)])
    toy.adapter.grid_size(tuple(imgs.shape[-2:]))  # the input check's size probe, once per size
    passes: list[int] = []
    handle = model.register_forward_hook(lambda _m, args, _o: passes.append(len(args[0])))
    maps = torch.rand(3, *GRID, generator=torch.Generator().manual_seed(4))
    expl = explanation(maps, imgs, gallery=True)
    batched = toy.score(expl, ["deletion"], deletion={"batch_size": 16})
    rows = 2 * 3 * len(STEPS)  # both sides x 3 pairs x 11 steps
    assert passes == [16] * (rows // 16) + [rows % 16]
    passes.clear()
    single = toy.score(expl, ["deletion"], deletion={"batch_size": 1})
    assert len(passes) == rows
    handle.remove()
    for key, value in batched.items():
        torch.testing.assert_close(value, single[key], atol=1e-6, rtol=0)
    torch.testing.assert_close(batched["deletion.query_auc"], batched["deletion.gallery_auc"])


def test_masker_choice(toy):
    image, maps = toy_image(), true_map()
    expl = explanation(maps, image)
    blur = toy.score(expl, ["deletion"], deletion={"masker": "blur",
                                                   "masker_options": {"sigma": 2.0}})
    mean = toy.score(expl, ["deletion"])
    assert not torch.equal(blur["deletion.query_auc"], mean["deletion.query_auc"])
    metric = get("metrics", "deletion").obj()
    noise = get("maskers", "noise").obj(std=0.0)  # zero noise around mean 0 = mean fill
    context = MetricContext(explainer=toy, explanation=expl, masker=noise)
    torch.testing.assert_close(metric.compute(context)["query_auc"], mean["deletion.query_auc"])
    with pytest.raises(PluginError, match="token_drop"):
        toy.score(expl, ["deletion"], deletion={"masker": "token_drop"})
    with pytest.raises(PluginError, match="steps"):
        toy.score(expl, ["deletion"], deletion={"steps": [0.5, 0.2]})


def test_token_drop_curves_on_a_vit():
    with explainify(make_timm_vit()) as exp:
        q, g = images(2), images(3, seed=1)
        expl = exp.explain(q, g, method="gradcam", top_k=1)
        out = exp.score(expl, ["deletion"], deletion={"masker": "token_drop"})
    # nothing dropped at step 0: the unperturbed score
    torch.testing.assert_close(out["deletion.query_curve_0"], expl.scores, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["deletion.gallery_curve_0"], expl.scores, atol=1e-5, rtol=0)


# -- Captum wrappers ----------------------------------------------------------------------------
def _plain_explanation():
    model = make_plain()
    exp = explainify(model, layer="trunk")
    expl = exp.explain(images(2), images(3, seed=1), method="gradcam", top_k=1)
    return model, exp, expl


def test_infidelity_equals_a_direct_captum_call():
    model, exp, expl = _plain_explanation()
    with exp:
        out = exp.score(expl, ["infidelity"], infidelity={"seed": 3, "n_perturb_samples": 4,
                                                          "std": 0.2})
    generator = torch.Generator().manual_seed(3)

    def perturb(x):
        noise = torch.randn(x.shape, generator=generator) * 0.2
        return noise, x - noise

    def forward(x, refs):
        return F.cosine_similarity(model(x), refs, dim=-1)

    for side in ("query", "gallery"):  # one generator, query side first
        grounding = getattr(expl, side)
        attributions = grounding.upsampled()[:, None].expand(-1, 3, -1, -1)
        with torch.no_grad():
            direct = captum.metrics.infidelity(
                forward, perturb, grounding.row_images(), attributions,
                additional_forward_args=(grounding.references,), n_perturb_samples=4,
                normalize=True)
        torch.testing.assert_close(out[f"infidelity.{side}"], direct, atol=1e-6, rtol=1e-4)
        assert (direct > 0).all()


def test_sensitivity_equals_a_direct_captum_call():
    model, exp, expl = _plain_explanation()
    with exp:
        out = exp.score(expl, ["sensitivity"], sensitivity={"seed": 5, "n_perturb_samples": 3,
                                                            "radius": 0.1, "side": "query"})
    assert set(out) == {"sensitivity.query"}
    generator = torch.Generator().manual_seed(5)

    def perturb(x, radius):
        return x + (torch.rand(x.shape, generator=generator) * 2 - 1) * radius

    def gradcam(x, additional_forward_args):
        x = x[0] if isinstance(x, tuple) else x
        cam = LayerGradCam(lambda i, r: F.cosine_similarity(model(i), r, dim=-1), model.trunk)
        with torch.enable_grad():
            return (cam.attribute(x, additional_forward_args=additional_forward_args,
                                  relu_attributions=True)[:, 0].detach(),)

    model.eval()
    direct = captum.metrics.sensitivity_max(
        gradcam, expl.query.row_images(), perturb_func=perturb, perturb_radius=0.1,
        n_perturb_samples=3, additional_forward_args=(expl.query.references,))
    torch.testing.assert_close(out["sensitivity.query"], direct, atol=1e-5, rtol=1e-4)
    assert (direct > 0).all()
