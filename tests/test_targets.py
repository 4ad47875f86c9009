"""The pair scores maps explain: the cosine, and the cosine centred on the gallery's mean."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import images, make_osnet

from reid_explain import CentredCosine, CosineSimilarity, InputError, explainify


def _embeddings(seed: int, n: int, d: int = 16) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def test_centred_cosine_is_the_cosine_minus_the_mean_cosine_with_the_gallery():
    queries, gallery = _embeddings(0, 5), _embeddings(1, 9)
    centre = F.normalize(gallery, dim=-1).mean(dim=0)
    for m in range(len(gallery)):
        target = CentredCosine(gallery[m].expand(5, -1), centre)
        expected = torch.stack([
            F.cosine_similarity(q, gallery[m], dim=0)
            - torch.stack([F.cosine_similarity(q, g, dim=0) for g in gallery]).mean()
            for q in queries])
        torch.testing.assert_close(target(queries), expected, rtol=1e-5, atol=1e-6)
    # it ranks each query's gallery exactly as the cosine does
    for q in queries:
        cosine = CosineSimilarity(gallery)(q.expand(len(gallery), -1))
        centred = CentredCosine(gallery, centre)(q.expand(len(gallery), -1))
        assert torch.equal(cosine.argsort(), centred.argsort())
        assert not torch.allclose(cosine, centred)
    # select() keeps the rows' directions
    target = CentredCosine(gallery[:5], centre)
    torch.testing.assert_close(target.select(slice(1, 3))(queries[1:3]), target(queries)[1:3])


def test_integrated_gradients_of_the_centred_score_are_complete():
    """Captum's completeness check on the new target: the attributions sum to the centred
    score of the image minus that of the baseline."""
    from captum.attr import IntegratedGradients

    model = make_osnet()
    x, gallery = images(2, (128, 64), seed=3), images(6, (128, 64), seed=4)
    with torch.no_grad():
        g_emb = F.normalize(model(gallery), dim=-1)
    target = CentredCosine(g_emb[:2], g_emb.mean(dim=0))

    def forward(inputs, directions):
        return target(model(inputs), directions)

    attr, delta = IntegratedGradients(forward).attribute(
        x, additional_forward_args=target.args, n_steps=64, return_convergence_delta=True)
    with torch.no_grad():
        gap = forward(x, *target.args) - forward(torch.zeros_like(x), *target.args)
    torch.testing.assert_close(attr.sum(dim=(1, 2, 3)), gap, rtol=0.02, atol=2e-3)
    assert delta.abs().max() < 2e-3


def test_explain_with_a_gallery_centre_refuses_what_it_cannot_centre():
    q, g = images(2, (128, 64), seed=0), images(4, (128, 64), seed=1)
    with explainify(make_osnet()) as exp:
        centred = exp.explain(q, g, method="gradcam", top_k=1, centre="gallery")
        plain = exp.explain(q, g, method="gradcam", top_k=1)
        given = exp.explain(q, g, method="gradcam", top_k=1,
                            centre=exp.embed(g).mean(dim=0))
        assert torch.equal(centred.pairs, plain.pairs)  # the same matches, other maps
        assert not torch.allclose(centred.query.maps, plain.query.maps)
        torch.testing.assert_close(centred.query.maps, given.query.maps)
        with pytest.raises(InputError, match="two gallery images"):
            exp.explain(q, g[:1], method="gradcam", centre="gallery")
        with pytest.raises(InputError, match="centre must be"):
            exp.explain(q, g, method="gradcam", centre="mean")
        with pytest.raises(InputError, match="centre must be a finite"):
            exp.explain(q, g, method="gradcam", centre=torch.full((3,), float("nan")))
        with pytest.raises(InputError, match="score must be one of"):
            exp.evaluate((q, g), method="gradcam", score="dot")
    from reid_explain.evaluation.protocol import score_centre

    with pytest.raises(InputError, match="score='centred' needs two gallery images.*'cosine'"):
        score_centre("centred", torch.ones(1, 4))
    assert score_centre("cosine", torch.ones(1, 4)) is None
