"""Word relevance beside the caption-blind references (reid_explain/evaluation/word_reference.py):
the references by hand, cross-fitting that never reads the scored pair, the same random words
for every row, and a verdict that is "no" for the reference's own relevance."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import make_tiny_clip

from reid_explain import explainify
from reid_explain.evaluation.word_reference import (
    _gaps,
    blind_relevance,
    cross_fitted_relevance,
    identity_folds,
    relevance_shares,
    word_faithfulness,
)
from reid_explain.plugins.metrics.text_counterfactual import TextCounterfactualMasking

# start 1, end 2, padding 0; words 5, 6, 7
TOKENS = torch.tensor([[1, 5, 6, 2, 0], [1, 5, 7, 2, 0], [1, 6, 7, 5, 2]])
SPECIAL = torch.tensor([[1, 0, 0, 1, 1], [1, 0, 0, 1, 1], [1, 0, 0, 0, 1]], dtype=torch.bool)


def test_shares_are_each_words_part_of_its_captions_absolute_relevance():
    relevance = torch.tensor([[9.0, 3.0, -1.0, 9.0, 9.0], [0.0, 0.0, 0.0, 0.0, 0.0],
                              [0.0, 1.0, 1.0, 2.0, 0.0]])
    shares = relevance_shares(relevance, SPECIAL)
    torch.testing.assert_close(shares, torch.tensor([[0, 0.75, -0.25, 0, 0], [0, 0, 0, 0, 0],
                                                     [0, 0.25, 0.25, 0.5, 0]]))


def test_lexical_and_position_references_by_hand():
    shares = torch.tensor([[0, 0.6, 0.4, 0, 0], [0, 0.2, 0.8, 0, 0], [0, 0.1, 0.3, 0.6, 0]])
    scored = torch.tensor([[1, 5, 7, 6, 8, 2]])  # 8 is a token the references never saw
    special = torch.tensor([[1, 0, 0, 0, 0, 1]], dtype=torch.bool)
    lexical = blind_relevance("lexical", scored, special, TOKENS, shares, SPECIAL)
    # 5: (0.6 + 0.2 + 0.6) / 3; 7: (0.8 + 0.3) / 2; 6: (0.4 + 0.1) / 2; 8: the mean of all 7
    unseen = (0.6 + 0.4 + 0.2 + 0.8 + 0.1 + 0.3 + 0.6) / 7
    torch.testing.assert_close(lexical, torch.tensor([[0, 1.4 / 3, 0.55, 0.25, unseen, 0]]))
    position = blind_relevance("position", TOKENS[:1], SPECIAL[:1], TOKENS, shares, SPECIAL)
    # position 1: (0.6 + 0.2 + 0.1) / 3, position 2: (0.4 + 0.8 + 0.3) / 3; specials 0
    torch.testing.assert_close(position, torch.tensor([[0, 0.3, 0.5, 0, 0]]))
    with pytest.raises(ValueError, match="unknown word reference 'nope'"):
        blind_relevance("nope", scored, special, TOKENS, shares, SPECIAL)


def test_cross_fitting_never_reads_the_scored_pairs_relevance():
    folds = identity_folds([7, 3, 7, 3])  # identities 3 and 7: folds 0 and 1
    assert folds.tolist() == [1, 0, 1, 0]
    here = torch.from_numpy(folds == 0)
    tokens = torch.cat([TOKENS[:2], TOKENS[:2]])
    special = torch.cat([SPECIAL[:2], SPECIAL[:2]])
    shares = torch.rand(4, 5, generator=torch.Generator().manual_seed(0))
    for kind in ("lexical", "position"):
        before = cross_fitted_relevance(kind, tokens, special, shares, folds)
        leaked = shares.clone()
        leaked[here] = 100.0  # fold 0's own relevance changes...
        after = cross_fitted_relevance(kind, tokens, special, leaked, folds)
        # ...and its reference does not; fold 1's, learnt from fold 0, does
        torch.testing.assert_close(after[here], before[here])
        assert not torch.allclose(after[~here], before[~here])
    with pytest.raises(ValueError, match="at least two identities"):
        cross_fitted_relevance("lexical", tokens, special, shares, np.zeros(4, dtype=int))


CAPTIONS = ["a man in a red shirt and blue jeans", "a woman with a black backpack",
            "a person in a white coat and black shoes", "a man with a green bag and gray pants",
            "a woman in a yellow dress with brown hair", "a man in a blue shirt and black jeans"]


@pytest.fixture(scope="module")
def tiny_clip_pairs():
    model = make_tiny_clip()
    images = torch.randn(3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    return model, images, [0, 0, 1, 1, 2, 2], [10, 10, 11, 11, 12, 12]


def test_word_faithfulness_on_a_tiny_clip(tiny_clip_pairs):
    model, images, owners, pids = tiny_clip_pairs
    with explainify(model) as exp:
        result = word_faithfulness(exp, CAPTIONS, images, owners, pids, k=0.3, n_random=3,
                                   text_options={"n_steps": 4})
        # the method's gap is the metric's own, run directly on token IG's explanation
        expl = exp.explain_text(CAPTIONS, images, method=None, text_method="token_ig",
                                pairs=list(enumerate(owners)), text_options={"n_steps": 4})
        from reid_explain.plugin_api.metric import MetricContext

        direct = TextCounterfactualMasking(k=0.3, n_random=3, seed=0).compute(
            MetricContext(explainer=exp, explanation=expl, text_explanation=expl,
                          gallery_embeddings=exp.embed(images), gallery_index=expl.pairs[:, 1]))
    assert "phrases" not in result
    assert result["pairs"] == 6 and set(result["references"]) == {"lexical", "position"}
    assert result["gap"]["mean"] == pytest.approx(float(direct["gap"].mean()), abs=1e-6)
    assert result["gap"]["n"] == 6
    strongest = max(result["references"], key=lambda r: result["references"][r]["gap"]["mean"])
    assert result["reference"] == strongest
    assert result["diff"] == pytest.approx(result["gap"]["mean"] - result["reference_gap"],
                                           abs=1e-6)
    assert result["beaten"] in (True, False) and result["beats_random"] in (True, False)
    for r in result["references"].values():
        assert np.isfinite(r["gap"]["mean"]) and r["gap"]["n"] == 6
    with pytest.raises(ValueError, match="at least two identities"):
        with explainify(model) as exp:
            word_faithfulness(exp, CAPTIONS, images, owners, [1] * 6)


def spans_of(caption: str, phrases: list[str]) -> list[tuple[int, int]]:
    return [(caption.index(p), caption.index(p) + len(p)) for p in phrases]


def test_phrases_remove_the_top_phrase_against_a_random_one(tiny_clip_pairs):
    model, images, owners, pids = tiny_clip_pairs
    phrases = [["red shirt", "blue jeans"], ["black backpack"], ["white coat", "black shoes"],
               ["green bag", "gray pants"], ["yellow dress", "brown hair"],
               ["blue shirt", "black jeans"]]
    spans = [spans_of(c, p) for c, p in zip(CAPTIONS, phrases, strict=True)]
    with explainify(model) as exp:
        result = word_faithfulness(exp, CAPTIONS, images, owners, pids, n_random=3,
                                   text_options={"n_steps": 4}, phrase_spans=spans)
        expl = exp.explain_text(CAPTIONS, images, method=None, text_method="token_ig",
                                pairs=list(enumerate(owners)), text_options={"n_steps": 4})
        from reid_explain.plugin_api.metric import MetricContext

        direct = TextCounterfactualMasking(phrase_spans=dict(enumerate(spans)), n_phrases=1,
                                           n_random=3, seed=0).compute(
            MetricContext(explainer=exp, explanation=expl, text_explanation=expl,
                          gallery_embeddings=exp.embed(images), gallery_index=expl.pairs[:, 1]))
        with pytest.raises(ValueError, match="5 phrase span lists for 6 captions"):
            word_faithfulness(exp, CAPTIONS, images, owners, pids, phrase_spans=spans[:5])
    scored = result["phrases"]
    # the one-phrase caption removes its only phrase whichever ranking: its gap is 0
    gaps = direct["gap"].numpy()
    assert gaps[1] == pytest.approx(0.0, abs=1e-7)
    assert scored["gap"]["mean"] == pytest.approx(float(gaps.mean()), abs=1e-6)
    assert set(scored["references"]) == {"lexical", "position"} and scored["gap"]["n"] == 6
    assert scored["diff"] == pytest.approx(scored["gap"]["mean"] - scored["reference_gap"],
                                           abs=1e-6)


def test_the_references_own_relevance_does_not_beat_it_and_random_words_are_shared(
        tiny_clip_pairs):
    model, images, owners, pids = tiny_clip_pairs
    with explainify(model) as exp:
        expl = exp.explain_text(CAPTIONS, images, method=None, text_method="token_ig",
                                pairs=list(enumerate(owners)), text_options={"n_steps": 4})
        tokens = exp.adapter.tokenize(CAPTIONS)
        special = expl.text.special.bool()
        lexical = cross_fitted_relevance("lexical", tokens, special,
                                         relevance_shares(expl.text.relevance, special),
                                         identity_folds(pids))
        blind = replace(expl, text=replace(expl.text, relevance=lexical))
        image_emb = exp.embed(images)
        options = {"k": 0.3, "n_random": 3, "seed": 0}
        as_method, as_reference = (_gaps(exp, e, image_emb, options, 0) for e in (blind, blind))
        method = _gaps(exp, expl, image_emb, options, 0)
    # a relevance that *is* the reference ties it exactly: the interval is [0, 0], not "beats"
    from reid_explain.evaluation.bootstrap import bootstrap_ci
    from reid_explain.evaluation.verdicts import ci_verdict

    ci = bootstrap_ci(as_method["gap"] - as_reference["gap"])
    assert (ci.low, ci.high) == (0.0, 0.0) and ci_verdict(ci.low, ci.high, True) is False
    # every relevance removes the same random words: only the top drop differs
    np.testing.assert_array_equal(method["random_drop"], as_reference["random_drop"])


def test_the_report_scores_words_only_when_its_captions_span_two_identities(tiny_clip_pairs,
                                                                           tmp_path):
    from reid_explain.evaluation.word_reference import spread_rows
    from reid_explain.report import text_sections
    from reid_explain.training.text_image import TextImageData

    model, images, owners, pids = tiny_clip_pairs
    data = TextImageData(images=images, image_pids=np.array([10, 11, 12]), captions=CAPTIONS,
                         caption_image=np.array(owners))
    assert spread_rows(data, 2).tolist() == [0, 5] and spread_rows(data, 1).tolist() == [0]
    with explainify(model) as exp:
        _, one = text_sections(exp, data, tmp_path / "one", methods=["gradcam"], top_k=2,
                               word_captions=1)  # one caption: one identity, no verdict
        _, two = text_sections(exp, data, tmp_path / "two", methods=["gradcam"], top_k=2,
                               word_captions=2)
    assert "words" not in one
    assert two["words"]["pairs"] == 2 and "phrases" not in two["words"]
