"""Masked copies batched over steps and pairs give the values of the one-image-at-a-time loop
(issue 17, target 4): deletion and insertion AUCs and the counterfactual drops of a real host
(osnet_x0_25) agree to 1e-6 with masking and embedding each image alone, and the batched
metrics run one host forward per chunk of masked images."""

from __future__ import annotations

import importlib
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from conftest import images, make_osnet

from reid_explain import explainify
from reid_explain.plugin_api.manager import get

curves = importlib.import_module("reid_explain.plugins.metrics.perturbation_curves")
counterfactual = importlib.import_module("reid_explain.plugins.metrics.counterfactual")

PAIRS = 2
STEPS = (0.0, 0.3, 0.6, 1.0)
SIZE = (128, 64)


@pytest.fixture(scope="module")
def setup():
    with explainify(make_osnet()) as exp:
        expl = exp.explain(images(PAIRS, SIZE, seed=1), images(PAIRS, SIZE, seed=2),
                           method="gradcam", pairs=[(i, i) for i in range(PAIRS)])
        # random maps: a real cell order whatever Grad-CAM of a random-init host gives
        g = torch.Generator().manual_seed(3)
        expl = replace(expl, query=replace(expl.query, maps=torch.rand(
            expl.query.on_grid().shape, generator=g)), gallery=replace(
            expl.gallery, maps=torch.rand(expl.gallery.on_grid().shape, generator=g)))
        yield exp, expl


def _embed_alone(exp, masker, image, mask):
    """One masked image, one host forward."""
    return exp.embed(masker(image[None], mask[None])).cpu()[0]


@pytest.mark.parametrize("name", ["deletion", "insertion"])
def test_curve_aucs_equal_the_one_image_loop(setup, name):
    exp, expl = setup
    masker = get("maskers", "mean").obj()
    sizes: list[int] = []
    handle = exp.model.register_forward_pre_hook(lambda m, a: sizes.append(len(a[0])))
    try:
        batched = exp.score(expl, [name], **{name: {"steps": STEPS}})
    finally:
        handle.remove()
    rows = 2 * PAIRS * len(STEPS)
    assert sizes == [rows]  # every step of every image of both sides: one forward
    fractions = torch.tensor(STEPS, dtype=torch.float64)
    for side in ("query", "gallery"):
        grounding = getattr(expl, side)
        masks = curves.step_masks(grounding.on_grid(), fractions, reveal=name == "insertion")
        refs = F.normalize(grounding.references.float(), dim=-1)
        loop = torch.tensor([[float(_embed_alone(exp, masker, grounding.row_images()[i],
                                                 masks[s, i]) @ refs[i])
                              for i in range(PAIRS)] for s in range(len(STEPS))])
        auc = torch.trapezoid(loop.double(), x=fractions, dim=0)
        torch.testing.assert_close(batched[f"{name}.{side}_auc"].double(), auc, atol=1e-6,
                                   rtol=0)
        for s, f in enumerate(STEPS):
            torch.testing.assert_close(batched[f"{name}.{side}_curve_{f:g}"].double(),
                                       loop[s].double(), atol=1e-6, rtol=0)


def test_counterfactual_drops_equal_the_one_image_loop(setup):
    exp, expl = setup
    k, n_random, seed = 0.2, 2, 5
    masker = get("maskers", "mean").obj()
    batched = exp.score(expl, ["counterfactual_masking"], counterfactual_masking={
        "k": k, "n_random": n_random, "seed": seed, "batch_size": 64})
    grid = expl.query.on_grid()
    n, h, w = grid.shape
    count = counterfactual.cell_count(k, h * w)
    generator = torch.Generator().manual_seed(seed)
    sets = [torch.zeros(n, h, w, dtype=torch.bool),
            counterfactual.ranked_cell_masks(grid, count, highest=True),
            *[counterfactual.random_cell_masks(n, (h, w), count, generator)
              for _ in range(n_random)],
            counterfactual.ranked_cell_masks(grid, count, highest=False)]
    refs = F.normalize(expl.query.references.float(), dim=-1)
    rows = expl.query.row_images()
    sims = torch.tensor([[float(_embed_alone(exp, masker, rows[i], m[i]) @ refs[i])
                          for i in range(n)] for m in sets])
    drops = sims[0] - sims[1:]
    expected = {"base_sim": sims[0], "top_drop": drops[0],
                "random_drop": drops[1:1 + n_random].mean(0), "bottom_drop": drops[-1],
                "gap": drops[0] - drops[1:1 + n_random].mean(0)}
    for key, value in expected.items():
        torch.testing.assert_close(batched[f"counterfactual_masking.{key}"].double(),
                                   value.double(), atol=1e-6, rtol=0)
