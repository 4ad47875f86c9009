"""Counterfactual region masking (image and text) and the bootstrap CI, on models whose answer
is known: a toy ReID net whose embedding reads one region only, and the tiny CLIP."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import images, make_tiny_clip
from torch import nn

from reid_explain import explainify
from reid_explain.evaluation.bootstrap import bootstrap_ci
from reid_explain.plugin_api.maps import TextImageExplanation, TokenRelevance
from reid_explain.plugin_api.metric import MetricContext
from reid_explain.plugins.metrics.counterfactual import (
    CounterfactualMasking,
    cell_count,
    ranked_cell_masks,
    retrieval_stats,
)
from reid_explain.plugins.metrics.text_counterfactual import (
    TextCounterfactualMasking,
    char_spans_to_tokens,
    remove_tokens,
)

SIZE = (32, 16)  # image (H, W); the conv grid is 8 x 4 cells of 4 x 4 pixels
ROWS, COLS = slice(2, 4), slice(1, 3)  # region R: 4 of the 32 cells
K = 4 / 32  # top-k fraction = exactly |R| cells


class RegionNet(nn.Module):
    """Embedding = linear function of the conv features of region R only. Cells do not overlap
    (kernel = stride = 4), so masking a cell outside R leaves the embedding bit-identical."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 6, 4, stride=4)
        self.head = nn.Linear(6 * 4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)[:, :, ROWS, COLS].flatten(1))


def region_net() -> nn.Module:
    torch.manual_seed(0)
    return RegionNet().eval()


def true_maps(n: int) -> torch.Tensor:
    maps = torch.zeros(n, 8, 4)
    maps[:, ROWS, COLS] = 1.0
    return maps


def explained_pairs(exp, n: int, side: str = "query"):
    """n queries, each explained against a noisy copy of itself (its true match)."""
    g = torch.Generator().manual_seed(1)
    query = torch.randn(n, 3, *SIZE, generator=g)
    gallery = query + 0.3 * torch.randn(n, 3, *SIZE, generator=g)
    return exp.explain(query, gallery, pairs=[(i, i) for i in range(n)], method="gradcam",
                       side=side), query, gallery


def with_maps(result, maps: torch.Tensor, side: str = "query"):
    return dataclasses.replace(result, **{side: dataclasses.replace(getattr(result, side),
                                                                    maps=maps)})


def run(exp, explanation, **options):
    metric = CounterfactualMasking(**options)
    values = metric.compute(MetricContext(explainer=exp, explanation=explanation, seed=0))
    return values, metric.summarize({k: v.numpy() for k, v in values.items()})


# --------------------------------------------------------------------------- toy faithfulness


def test_true_region_drop_is_far_above_random_and_random_map_is_not():
    with explainify(region_net(), layer="features") as exp:
        result, _, _ = explained_pairs(exp, 60)
        values, true = run(exp, with_maps(result, true_maps(60)), k=K)
        contains_zero = []
        for seed in range(10):
            random_map = torch.rand(60, 8, 4, generator=torch.Generator().manual_seed(seed))
            _, rand = run(exp, with_maps(result, random_map), k=K)
            contains_zero.append(rand["gap_ci_low"] <= 0.0 <= rand["gap_ci_high"])
            # the random baseline does not depend on the map
            assert rand["random_drop"] == pytest.approx(true["random_drop"])
    # true region: every cell of R removed; bottom cells are outside R, so no change at all
    assert torch.equal(values["bottom_drop"], torch.zeros(60))
    assert true["top_drop"] > 5 * true["random_drop"] > 0
    assert true["gap_ci_low"] > 0.5 and true["gap_ci_low"] > 10 * (rand["gap_ci_high"]
                                                                    - rand["gap_ci_low"]) / 2
    assert (values["random_drop_std"] > 0).any()
    # a random map's top-k is a random cell set: the gap CI covers 0 (nominal 95%)
    assert contains_zero[0] and sum(contains_zero) >= 8


def test_cell_selection_counts_and_ties():
    assert [cell_count(k, 32) for k in (0.1, 0.125, 0.2, 0.3, 1.0, 0.001)] == [3, 4, 6, 10, 32, 1]
    with pytest.raises(ValueError):
        cell_count(0.0, 32)
    flat = torch.tensor([[1.0, 3.0, 3.0, 0.0, 3.0, 1.0]]).view(1, 2, 3)
    assert ranked_cell_masks(flat, 2).flatten().tolist() == [False, True, True, False, False,
                                                             False]
    assert ranked_cell_masks(flat, 2, highest=False).flatten().nonzero()[:, 0].tolist() == [0, 3]
    constant = torch.zeros(1, 2, 3)
    assert ranked_cell_masks(constant, 3).flatten().nonzero()[:, 0].tolist() == [0, 1, 2]


def test_all_variants_go_through_the_host_in_chunked_batches():
    model = region_net()
    with explainify(model, layer="features") as exp:
        result, _, _ = explained_pairs(exp, 7)
        sizes: list[int] = []
        handle = model.register_forward_hook(lambda m, a, o: sizes.append(int(a[0].shape[0])))
        run(exp, with_maps(result, true_maps(7)), k=K, n_random=3, batch_size=1000)
        one_pass = list(sizes)
        sizes.clear()
        run(exp, with_maps(result, true_maps(7)), k=K, n_random=3, batch_size=8)
        handle.remove()
    assert one_pass == [7 * (3 + 3)]  # unmasked + top + 3 random + bottom, all pairs at once
    assert sum(sizes) == 42 and max(sizes) <= 8


def test_registered_and_used_by_name():
    with explainify(region_net(), layer="features") as exp:
        result, _, _ = explained_pairs(exp, 3)
        scores = exp.score(result, ["counterfactual_masking"],
                           counterfactual_masking={"k": K, "n_random": 2})
    assert scores["counterfactual_masking.top_drop"].shape == (3,)
    assert "counterfactual_masking.gap" in scores


# --------------------------------------------------------------------------- rank / AP bookkeeping


def test_retrieval_stats_hand_example():
    #            junk  pos   neg   pos   neg   neg (ties the target)
    pids = torch.tensor([1, 1, 2, 1, 3, 2])
    cams = torch.tensor([0, 1, 1, 1, 0, 0])
    sims = torch.tensor([[0.9, 0.5, 0.8, 0.3, 0.6, 0.5],
                         [0.9, 0.5, 0.8, 0.3, 0.6, 0.5]])
    out = retrieval_stats(sims, torch.tensor([1, 0]), torch.tensor([1, 1]),
                          torch.tensor([0, 0]), pids, cams)
    # valid order: g2 .8 (neg), g4 .6 (neg), g1 .5 (pos), g5 .5 (neg, after g1 by index),
    # g3 .3 (pos). The junk g0 (same pid, same camera) is not ranked.
    assert out["rank"][0].item() == 3.0  # g2, g4 strictly greater; g5's tie does not count
    assert np.isnan(out["rank"][1].item())  # target is junk
    assert out["ap"][0].item() == pytest.approx((1 / 3 + 2 / 5) / 2)
    assert out["r1"].tolist() == [0.0, 0.0]
    hit = retrieval_stats(torch.tensor([[0.9, 0.95, 0.8, 0.3, 0.6, 0.5]]), torch.tensor([1]),
                          torch.tensor([1]), torch.tensor([0]), pids, cams)
    assert hit["rank"].item() == 1.0 and hit["r1"].item() == 1.0
    assert hit["ap"].item() == pytest.approx((1 / 1 + 2 / 5) / 2)


def _reference_stats(q_emb, gallery, target, q_pid, q_cam, g_pids, g_cams):
    """Plain-Python Market-1501 bookkeeping for one query embedding."""
    s = [float(q_emb @ g) for g in gallery]
    valid = [i for i in range(len(s)) if not (g_pids[i] == q_pid and g_cams[i] == q_cam)]
    rank = 1 + sum(1 for i in valid if s[i] > s[target])
    order = sorted(valid, key=lambda i: (-s[i], i))
    hits, precisions = 0, []
    for pos, i in enumerate(order, start=1):
        if g_pids[i] == q_pid:
            hits += 1
            precisions.append(hits / pos)
    return rank, sum(precisions) / len(precisions), float(g_pids[order[0]] == q_pid)


def _mean_fill(images_, cell_mask):
    """Zero the 4x4 pixel blocks of the masked cells (what the "mean" masker does)."""
    pixels = cell_mask.repeat_interleave(4, dim=-2).repeat_interleave(4, dim=-1)
    return images_.masked_fill(pixels[:, None], 0.0)


@pytest.mark.parametrize("side", ["query", "gallery"])
@pytest.mark.parametrize("which", ["random", "true"])
def test_rank_and_ap_after_masking_equal_a_hand_computation(side, which):
    model = region_net()
    n = 4
    g = torch.Generator().manual_seed(5)
    maps = torch.rand(n, 8, 4, generator=g) if which == "random" else true_maps(n)
    with explainify(model, layer="features") as exp:
        result, query, pair_gallery = explained_pairs(exp, n, side=side)
        result = with_maps(result, maps, side=side)
        # gallery: the 4 true matches (cameras 1) + 8 distractors; query i has pid i, camera 0,
        # and g4 (pid 0, camera 0) is junk for query 0
        extra = torch.randn(8, 3, *SIZE, generator=g)
        gallery = torch.cat([pair_gallery, extra])
        g_pids = torch.tensor([0, 1, 2, 3, 0, 1, 2, 5, 6, 7, 8, 9])
        g_cams = torch.tensor([1, 1, 1, 1, 0, 2, 2, 0, 0, 0, 0, 0])
        g_emb = exp.embed(gallery)
        context = MetricContext(explainer=exp, explanation=result, gallery_embeddings=g_emb,
                                gallery_pids=g_pids, gallery_camids=g_cams,
                                query_pids=torch.arange(n), query_camids=torch.zeros(n),
                                gallery_index=torch.arange(n))
        values = CounterfactualMasking(k=0.25, n_random=2, side=side).compute(context)
        count = cell_count(0.25, 32)
        for variant, cells in (("top", ranked_cell_masks(maps, count)),
                               ("bottom", ranked_cell_masks(maps, count, highest=False)),
                               ("before", torch.zeros(n, 8, 4, dtype=torch.bool))):
            own = query if side == "query" else pair_gallery
            with torch.no_grad():
                masked = F.normalize(model(_mean_fill(own, cells)), dim=-1)
            q_emb = exp.embed(query)
            for i in range(n):
                gal = g_emb.clone()
                if side == "query":
                    q = masked[i]
                else:
                    q, gal[i] = q_emb[i], masked[i]
                rank, ap, r1 = _reference_stats(q, gal, i, i, 0, g_pids.tolist(),
                                                g_cams.tolist())
                name = (lambda key: f"{key}_before") if variant == "before" else \
                    (lambda key, v=variant: f"{v}_{key}")
                assert values[name("rank")][i].item() == rank
                assert values[name("ap")][i].item() == pytest.approx(ap, abs=1e-6)
                assert values[name("r1")][i].item() == r1
    # the toy's true matches are near copies: found at rank 1 before masking; removing R
    # (the true map's top cells) pushes them down
    assert values["rank_before"].tolist() == [1.0] * n
    if which == "true":
        assert (values["top_rank"] > 1).sum() >= 3 and (values["top_ap"] < 0.5).sum() >= 3


def test_summary_deltas_and_prefixed_keys():
    values = {"counterfactual_masking.r1_before": np.array([1.0, 1.0, 0.0, 1.0]),
              "counterfactual_masking.top_r1": np.array([0.0, 1.0, 0.0, 0.0]),
              "counterfactual_masking.ap_before": np.array([1.0, 0.5, 0.25, np.nan]),
              "counterfactual_masking.top_ap": np.array([0.5, 0.5, 0.25, 0.1]),
              "counterfactual_masking.random_ap": np.array([1.0, 0.5, 0.25, 0.2]),
              "counterfactual_masking.gap": np.array([0.2, 0.4, 0.3, 0.1])}
    out = CounterfactualMasking(n_boot=500).summarize(values)
    assert out["delta_r1_top"] == pytest.approx(0.25 - 0.75)
    assert out["delta_map_top"] == pytest.approx(-0.5 / 3)  # the NaN query is left out
    assert out["gap_mean"] == pytest.approx(0.25)
    assert out["gap_ci_low"] <= 0.25 <= out["gap_ci_high"]
    assert out["ap_gap_mean"] == pytest.approx(0.6 / 4)
    assert "delta_map_bottom" not in out


# --------------------------------------------------------------------------- text side

TEXTS = ["a woman in a red coat with a black backpack", "a man wearing blue jeans",
         "a tall person carrying a bag"]


@pytest.fixture(scope="module")
def clip_explainer():
    with explainify(make_tiny_clip()) as exp:
        yield exp


def _text_explanation(exp, relevance_seed: int = 0) -> tuple[TextImageExplanation, torch.Tensor]:
    pairs = torch.tensor([[0, 0], [1, 1], [2, 2], [0, 1]])
    tokens = exp.adapter.tokenize(TEXTS)[pairs[:, 0]]
    special = exp.adapter.special_tokens(tokens)
    relevance = torch.randn(tokens.shape, generator=torch.Generator().manual_seed(relevance_seed))
    relevance = relevance.masked_fill(special, 0.0)
    imgs = images(3, (64, 32), seed=3)
    i_emb = exp.embed(imgs)
    image_map = exp.explain_text(TEXTS, imgs, method="gradcam", text_method=None,
                                 pairs=pairs).image
    text = TokenRelevance(relevance=relevance, tokens=exp.adapter.decode_tokens(tokens),
                          scores=torch.zeros(4), method="chosen", special=special)
    explanation = TextImageExplanation(pairs=pairs, scores=torch.zeros(4), method="gradcam",
                                       image=image_map, text=text, texts=TEXTS)
    return explanation, i_emb[pairs[:, 1]]


def _direct_drop(exp, tokens, remove, image_emb):
    with torch.no_grad():
        before = F.normalize(exp.adapter.embed_text(tokens[None]), dim=-1)[0]
        after = F.normalize(exp.adapter.embed_text(remove_tokens(tokens, remove)[None]),
                            dim=-1)[0]
    return float(before @ image_emb - after @ image_emb)


def test_word_removal_equals_direct_reencoding_of_edited_ids(clip_explainer):
    exp = clip_explainer
    explanation, image_emb = _text_explanation(exp)
    tokens = exp.adapter.tokenize(TEXTS)[explanation.pairs[:, 0]]
    metric = TextCounterfactualMasking(k=0.3, n_random=3)
    values = metric.compute(MetricContext(explainer=exp, explanation=None,
                                          text_explanation=explanation))
    special = explanation.text.special
    for p in range(4):
        words = (~special[p]).nonzero()[:, 0]
        n = max(1, int(np.floor(0.3 * len(words) + 0.5)))
        rel = explanation.text.relevance[p, words]
        for key, chosen in (("top_drop", words[rel.argsort(descending=True)[:n]]),
                            ("bottom_drop", words[rel.argsort()[:n]])):
            remove = torch.zeros_like(tokens[p], dtype=torch.bool)
            remove[chosen] = True
            edited = remove_tokens(tokens[p], remove)
            # start/end tokens untouched, end token still where open_clip pools
            assert edited[special[p]].tolist() == tokens[p][special[p]].tolist()
            assert int(edited.argmax()) == int(tokens[p].argmax())
            assert values[key][p].item() == pytest.approx(
                _direct_drop(exp, tokens[p], remove, image_emb[p]), abs=1e-5)
        assert values["n_removed"][p].item() == n
    summary = metric.summarize({k: v.numpy() for k, v in values.items()})
    assert summary["gap_ci_low"] <= summary["gap_mean"] <= summary["gap_ci_high"]


def test_text_variants_are_one_batched_pass(clip_explainer):
    exp = clip_explainer
    explanation, _ = _text_explanation(exp)
    sizes: list[int] = []
    handle = exp.model.token_embedding.register_forward_hook(
        lambda m, a, o: sizes.append(int(a[0].shape[0])))
    try:
        TextCounterfactualMasking(n_random=4).compute(
            MetricContext(explainer=exp, explanation=None, text_explanation=explanation))
    finally:
        handle.remove()
    assert sizes == [4 * (4 + 3)]


def test_phrase_removal_uses_character_spans(clip_explainer):
    exp = clip_explainer
    caption = TEXTS[0]
    spans = [(caption.index("red coat"), caption.index("red coat") + 8),
             (caption.index("black backpack"), len(caption))]
    positions = char_spans_to_tokens(exp.adapter, caption, spans)
    decoded = exp.adapter.decode_tokens(exp.adapter.tokenize([caption]))[0]
    assert [[decoded[i] for i in ph] for ph in positions] == [["red", "coat"],
                                                              ["black", "backpack"]]
    explanation, image_emb = _text_explanation(exp)
    rel = explanation.text.relevance
    values = TextCounterfactualMasking(phrase_spans={0: spans}, n_phrases=1).compute(
        MetricContext(explainer=exp, explanation=None, text_explanation=explanation))
    tokens = exp.adapter.tokenize(TEXTS)[0]
    best = max(positions, key=lambda ph: float(rel[0, ph].sum()))
    remove = torch.zeros_like(tokens, dtype=torch.bool)
    remove[best] = True
    assert values["top_drop"][0].item() == pytest.approx(
        _direct_drop(exp, tokens, remove, image_emb[0]), abs=1e-5)
    assert values["n_removed"][0].item() == 2
    assert np.isnan(values["top_drop"][1].item())  # caption 1 has no phrase spans


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_covers_the_true_mean_and_is_deterministic():
    rng = np.random.default_rng(0)
    covered = [bootstrap_ci(rng.normal(1.0, 2.0, size=60), n_boot=400, seed=i).contains(1.0)
               for i in range(200)]
    assert np.mean(covered) >= 0.9
    x = rng.exponential(size=30)
    assert bootstrap_ci(x, seed=7) == bootstrap_ci(x, seed=7)
    assert bootstrap_ci(x, seed=7) != bootstrap_ci(x, seed=8)
    with_nan = bootstrap_ci(np.append(x, np.nan), seed=7)
    assert with_nan.n == 30 and with_nan.low == bootstrap_ci(x, seed=7).low
    assert np.isnan(bootstrap_ci(np.array([np.nan])).low)
