"""Rollout and attention relevance run each image through the host once (issue 17, target 5).

A query explained against several gallery images shares one forward: rollout repeats the
image's map per pair, attention relevance backpropagates each pair's score in its own pass of a
batched backward over that one graph. The maps must equal the straightforward computation: one
forward (and backward) of the image alone per pair, written out by hand below.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import images, make_timm_vit, make_tiny_clip, manual_timm_forward

from reid_explain import explainify
from reid_explain.plugin_api import manager as plugin_manager
from reid_explain.plugin_api.targets import CosineSimilarity
from reid_explain.plugins.attributions.attention_relevance import occurrences


def _rollout_alone(vit, image):
    with torch.no_grad():
        _, attentions = manual_timm_forward(vit, image[None])
    n = attentions[0].shape[-1]
    result = torch.eye(n)[None]
    for attn in attentions:
        a = attn.mean(dim=1) + torch.eye(n)
        result = (a / a.sum(dim=-1, keepdim=True)) @ result
    return result[0, 0, 1:].reshape(4, 2)


def _relevance_alone(vit, image, reference):
    """One pair, one image: forward with gradients, backward of this pair's score only."""
    x = image[None].clone().requires_grad_(True)
    emb, attentions = manual_timm_forward(vit, x)
    F.cosine_similarity(emb, reference[None], dim=-1).sum().backward()
    n = attentions[0].shape[-1]
    relevance = torch.eye(n)[None]
    for attn in attentions:
        relevance = relevance + (attn.grad * attn).clamp(min=0).mean(dim=1) @ relevance
    return relevance[0, 0, 1:].reshape(4, 2).detach()


def _embed(vit, x):
    with torch.no_grad():
        return vit(x)


@pytest.mark.parametrize("top_k", [None, 3])
def test_rollout_and_relevance_equal_each_pair_computed_alone(top_k):
    vit = make_timm_vit()
    q, g = images(2), images(4, seed=1)
    q_emb, g_emb = _embed(vit, q), _embed(vit, g)
    with explainify(vit) as exp:
        for method in ("rollout", "attention_relevance"):
            result = exp.explain(q, g, method=method, top_k=top_k)
            assert len(result) == 2 * (top_k or 4)
            for p, (qi, gi) in enumerate(result.pairs.tolist()):
                if method == "rollout":
                    ref_q, ref_g = _rollout_alone(vit, q[qi]), _rollout_alone(vit, g[gi])
                else:
                    ref_q = _relevance_alone(vit, q[qi], g_emb[gi])
                    ref_g = _relevance_alone(vit, g[gi], q_emb[qi])
                    assert ref_q.abs().sum() > 0
                torch.testing.assert_close(result.query.maps[p], ref_q, atol=1e-5, rtol=1e-4)
                torch.testing.assert_close(result.gallery.maps[p], ref_g, atol=1e-5, rtol=1e-4)


def test_relevance_with_uneven_sharing_equals_rows_alone(monkeypatch):
    """Rows naming images unevenly (one image four times, others once) take the expanded
    path; evenly shared rows the batched backward: both equal the rows run one by one."""
    relevance = plugin_manager.get("attributions", "attention_relevance").obj
    passes = []
    original = relevance._relevance

    def spy(self, inputs, target, index, slot, repeats):
        passes.append((len(inputs), repeats))
        return original(self, inputs, target, index, slot, repeats)

    monkeypatch.setattr(relevance, "_relevance", spy)
    vit = make_timm_vit()
    x, refs = images(3), F.normalize(torch.randn(6, 192, generator=torch.Generator()
                                                  .manual_seed(5)), dim=-1)
    with explainify(vit) as exp:
        for index in ([0, 1, 0, 2, 0, 1], [0, 0, 0, 0, 1, 2], [1, 1, 1, 1, 1, 1]):
            maps = exp.attribute(x, CosineSimilarity(refs), method="attention_relevance",
                                 image_index=torch.tensor(index))
            for row, image in enumerate(index):  # row: image `image` against reference `row`
                torch.testing.assert_close(maps[row], _relevance_alone(vit, x[image], refs[row]),
                                           atol=1e-5, rtol=1e-4)
    # (images, backward passes): shared 3 x 3; expanded 6 x 1; shared 1 x 6
    assert passes == [(3, 3), (6, 1), (1, 6)]


def test_open_clip_relevance_shared_equals_each_pair_alone():
    clip = make_tiny_clip()
    q, g = images(1), images(3, seed=1)
    with explainify(clip) as exp:
        shared = exp.explain(q, g, method="attention_relevance")
        alone = [exp.explain(q, g[gi: gi + 1], method="attention_relevance")
                 for gi in shared.pairs[:, 1].tolist()]
    for p, one in enumerate(alone):
        torch.testing.assert_close(shared.query.maps[p], one.query.maps[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(shared.gallery.maps[p], one.gallery.maps[0], atol=1e-5,
                                   rtol=1e-4)
    assert not torch.allclose(shared.query.maps[0], shared.query.maps[1])


@pytest.mark.parametrize("method", ["rollout", "attention_relevance"])
def test_query_against_k_gallery_runs_each_image_once(method):
    """explain(q, g, top_k=k): the query is embedded once and explained in one forward; the
    gallery's explanation pass is its embedding pass: k + 2 image rows in all."""
    vit = make_timm_vit()
    k = 5
    q, g = images(1), images(k, seed=1)
    rows = []
    handle = vit.patch_embed.register_forward_pre_hook(lambda _m, a: rows.append(len(a[0])))
    with explainify(vit) as exp:
        exp.explain(q, g, method=method, top_k=k)
    handle.remove()
    assert sum(rows) == k + 2, rows


def test_occurrences():
    assert occurrences(torch.tensor([3, 1, 3, 3, 0, 1, 5])).tolist() == [0, 0, 1, 2, 0, 1, 0]
    assert occurrences(torch.tensor([], dtype=torch.long)).tolist() == []


@pytest.mark.parametrize("head_fusion,discard_ratio", [("mean", 0.0), ("max", 0.3),
                                                       ("min", 0.0)])
def test_class_token_row_equals_row_of_whole_product(head_fusion, discard_ratio):
    """The row-vector products equal row 0 of the whole matrix products they replace."""
    from reid_explain.plugins.attributions.attention_relevance import (
        class_token_relevance,
        relevance_from_weighted,
    )
    from reid_explain.plugins.attributions.attention_rollout import (
        class_token_rollout,
        rollout,
    )

    gen = torch.Generator().manual_seed(0)
    attentions = [torch.rand(3, 4, 17, 17, generator=gen).softmax(-1) for _ in range(5)]
    torch.testing.assert_close(
        class_token_rollout(attentions, head_fusion, discard_ratio)[:, 0],
        rollout(attentions, head_fusion, discard_ratio)[:, 0], atol=1e-6, rtol=1e-5)
    weighted = [torch.rand(3, 17, 17, generator=gen) * 0.2 for _ in range(5)]
    torch.testing.assert_close(class_token_relevance(weighted)[:, 0],
                               relevance_from_weighted(weighted)[:, 0], atol=1e-6, rtol=1e-5)
