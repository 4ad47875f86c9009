"""Word relevance beside a caption-blind reference: does it say more than which words usually
matter?

An image map is judged against the strongest map drawn without the image. Word relevance has
its own blind guess: in a ReID caption, colour words and garment nouns move the caption-image
score whatever the pair, so a relevance that ranks them first removes the right words without
reading either the caption's image or the caption's own context. Two references that never see
the scored pair (each built from the *other* half of the identities, two-fold cross-fitting, so
any data set with identities works, no split needed):

- **lexical**: each token's mean share of its caption's relevance (relevance over the sum of
  its caption's absolute relevance) on the other identities' pairs; a token never seen there
  gets the mean share of all tokens;
- **position**: the mean share at each token position.

Both go through the same metric as the method (``text_counterfactual_masking``: the drop of the
caption-image cosine when the top ``k`` of the words are removed, minus the drop for random
words of the same number), on the same pairs with the same random draws, so the per-pair
difference of gaps is the difference of top drops. The reference is the stronger of the two on
these pairs (the conservative choice: it favours the reference), and the verdict is the 95 %
bootstrap interval of gap(method) - gap(reference) over pairs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from ..plugin_api import manager as plugin_manager
from ..plugin_api.maps import TextImageExplanation
from ..plugin_api.metric import MetricContext
from .bootstrap import bootstrap_ci
from .verdicts import ci_verdict

if TYPE_CHECKING:
    from ..plugin_api.interfaces import ExplainerLike

#: the caption-blind references, in the order they are tried
WORD_REFERENCES: tuple[str, ...] = ("lexical", "position")
#: the metric that scores word relevance (a plugin, by name)
WORD_METRIC = "text_counterfactual_masking"


def relevance_shares(relevance: Tensor, special: Tensor) -> Tensor:
    """``(N, L)``: each word token's relevance over its caption's total absolute relevance (0
    on special tokens and for a caption whose relevance is all zero)."""
    rel = relevance.float().masked_fill(special.bool(), 0.0)
    total = rel.abs().sum(dim=1, keepdim=True)
    return torch.where(total > 0, rel / total.clamp_min(1e-30), torch.zeros_like(rel))


def blind_relevance(kind: str, tokens: Tensor, special: Tensor, build_tokens: Tensor,
                    build_shares: Tensor, build_special: Tensor) -> Tensor:
    """``(N, L)`` relevance of the ``kind`` reference for captions ``tokens``, learnt from the
    shares of other captions (``build_*``); it never reads the scored captions' relevance."""
    if kind not in WORD_REFERENCES:
        raise ValueError(f"unknown word reference {kind!r}; known: {list(WORD_REFERENCES)}")
    words = ~build_special.bool()
    if not words.any():
        raise ValueError("a word reference needs at least one word token to learn from")
    if kind == "position":
        counts = words.sum(dim=0).clamp_min(1)
        by_position = (build_shares * words).sum(dim=0) / counts
        out = by_position[None].expand_as(tokens).clone()
    else:
        sums: dict[int, float] = defaultdict(float)
        counts_: dict[int, int] = defaultdict(int)
        for token, share in zip(build_tokens[words].tolist(), build_shares[words].tolist(),
                                strict=True):
            sums[token] += share
            counts_[token] += 1
        default = float(build_shares[words].mean())
        out = torch.tensor([[sums[t] / counts_[t] if t in counts_ else default for t in row]
                            for row in tokens.tolist()], dtype=torch.float32)
    return out.masked_fill(special.bool(), 0.0)


def identity_folds(pids: Sequence[int] | np.ndarray) -> np.ndarray:
    """Fold 0 or 1 per pair: identities in sorted order, alternately (both folds get some
    identities whenever there are two)."""
    pids = np.asarray(pids)
    order = {p: i % 2 for i, p in enumerate(np.unique(pids))}
    return np.array([order[p] for p in pids], dtype=int)


def cross_fitted_relevance(kind: str, tokens: Tensor, special: Tensor, shares: Tensor,
                           folds: np.ndarray) -> Tensor:
    """The ``kind`` reference's relevance of every pair, each fold's learnt on the other."""
    out = torch.zeros(shares.shape, dtype=torch.float32)
    for fold in (0, 1):
        here = torch.from_numpy(folds == fold)
        other = ~here
        if not here.any():
            continue
        if not other.any():
            raise ValueError("a caption-blind word reference needs at least two identities")
        out[here] = blind_relevance(kind, tokens[here], special[here], tokens[other],
                                    shares[other], special[other])
    return out


def _gaps(explainer: ExplainerLike, explanation: TextImageExplanation, image_emb: Tensor,
          options: dict[str, Any], seed: int) -> dict[str, np.ndarray]:
    metric = plugin_manager.get("metrics", WORD_METRIC).obj(**options)
    context = MetricContext(explainer=explainer, explanation=explanation, seed=seed,
                            text_explanation=explanation, gallery_embeddings=image_emb,
                            gallery_index=explanation.pairs[:, 1])
    values = metric.compute(context)
    return {k: values[k].double().numpy() for k in ("gap", "top_drop", "random_drop")}


def _interval(values: np.ndarray, seed: int) -> dict[str, Any]:
    ci = bootstrap_ci(values, seed=seed)
    return {"mean": ci.estimate, "low": ci.low, "high": ci.high, "n": ci.n}


def _scored(explainer: ExplainerLike, explanation: TextImageExplanation,
            relevances: dict[str, Tensor], image_emb: Tensor, options: dict[str, Any],
            seed: int) -> dict[str, Any]:
    """The method's gap and each reference's (relevance ``relevances[kind]``) on the same
    pairs and random draws; the verdicts against random units and the stronger reference."""
    method_gaps = _gaps(explainer, explanation, image_emb, options, seed)
    references: dict[str, dict[str, Any]] = {}
    for kind, relevance in relevances.items():
        blind = replace(explanation, text=replace(explanation.text, relevance=relevance,
                                                  method=kind))
        gaps = _gaps(explainer, blind, image_emb, options, seed)
        references[kind] = {"gap": _interval(gaps["gap"], seed),
                            "top_drop": float(np.nanmean(gaps["top_drop"])),
                            "diff": _interval(method_gaps["gap"] - gaps["gap"], seed)}
    strongest = max(references, key=lambda r: references[r]["gap"]["mean"])
    versus_random = _interval(method_gaps["gap"], seed)
    versus_reference = references[strongest]["diff"]
    return {
        "gap": versus_random,
        "top_drop": float(np.nanmean(method_gaps["top_drop"])),
        "random_drop": float(np.nanmean(method_gaps["random_drop"])),
        "beats_random": ci_verdict(versus_random["low"], versus_random["high"], True),
        "references": references, "reference": strongest,
        "reference_gap": references[strongest]["gap"]["mean"],
        "diff": versus_reference["mean"], "diff_low": versus_reference["low"],
        "diff_high": versus_reference["high"],
        "beaten": ci_verdict(versus_reference["low"], versus_reference["high"], True),
    }


def word_faithfulness(explainer: ExplainerLike, captions: Sequence[str], images: Tensor,
                      image_of_caption: Sequence[int], pids: Sequence[int],
                      method: str = "token_ig", k: float = 0.2, n_random: int = 5,
                      seed: int = 0, text_options: dict[str, Any] | None = None,
                      phrase_spans: Sequence[Sequence[tuple[int, int]]] | None = None
                      ) -> dict[str, Any]:
    """Each caption explained against its image ``images[image_of_caption[i]]`` by ``method``
    (token relevance); the counterfactual word gap of the method and of each caption-blind
    reference on the same pairs, and the method's verdicts against random words and against
    the stronger reference. ``pids[i]`` is caption ``i``'s identity (the folds).

    With ``phrase_spans`` (per caption, character spans of its phrases) the same for whole
    phrases under ``"phrases"``: the top phrase (relevance summed over its tokens, the
    references' too) removed against a random phrase."""
    if len(captions) != len(image_of_caption) or len(captions) != len(pids):
        raise ValueError(f"{len(captions)} captions, {len(image_of_caption)} image indices and "
                         f"{len(pids)} identities: one of each per caption")
    if phrase_spans is not None and len(phrase_spans) != len(captions):
        raise ValueError(f"{len(phrase_spans)} phrase span lists for {len(captions)} captions")
    if len(np.unique(np.asarray(pids))) < 2:
        raise ValueError("word faithfulness needs captions of at least two identities")
    pairs = [(i, int(j)) for i, j in enumerate(image_of_caption)]
    explanation = explainer.explain_text(list(captions), images, method=None,
                                         text_method=method, pairs=pairs,
                                         text_options=text_options)
    tokens = explainer.adapter.tokenize(list(captions)).cpu()
    special = explanation.text.special.bool().cpu()
    shares = relevance_shares(explanation.text.relevance.detach().cpu(), special)
    folds = identity_folds(pids)
    relevances = {kind: cross_fitted_relevance(kind, tokens, special, shares, folds)
                  for kind in WORD_REFERENCES}
    image_emb = explainer.embed(images).cpu()
    options = {"k": k, "n_random": n_random, "seed": seed}
    out = {"method": method, "pairs": len(captions), "k": k, "n_random": n_random,
           **_scored(explainer, explanation, relevances, image_emb, options, seed)}
    if phrase_spans is not None:
        spans = {i: [tuple(s) for s in caption] for i, caption in enumerate(phrase_spans)}
        out["phrases"] = {"n_phrases": 1, **_scored(
            explainer, explanation, relevances, image_emb,
            {"phrase_spans": spans, "n_phrases": 1, "n_random": n_random, "seed": seed},
            seed)}
    return out


def spread_rows(data: Any, max_captions: int) -> np.ndarray:
    """Up to ``max_captions`` caption rows spread evenly over a split (so over its
    identities, which are stored one after another)."""
    return np.unique(np.linspace(0, len(data) - 1, min(max_captions, len(data))).astype(int))


def split_word_faithfulness(explainer: ExplainerLike, data: Any, max_captions: int = 100,
                            **options: Any) -> dict[str, Any]:
    """:func:`word_faithfulness` on the :func:`spread_rows` of a
    :class:`~reid_explain.training.text_image.TextImageData`, each caption against its own
    image, with the data's phrase spans when it has them."""
    rows = spread_rows(data, max_captions)
    images, image_of_caption = np.unique(np.asarray(data.caption_image)[rows],
                                         return_inverse=True)
    spans = ([[(p["start"], p["end"]) for p in data.phrases[r]] for r in rows]
             if data.phrases else None)
    return word_faithfulness(explainer, [data.captions[r] for r in rows],
                             data.images[torch.as_tensor(images)], image_of_caption.tolist(),
                             np.asarray(data.caption_pids)[rows].tolist(),
                             phrase_spans=spans, **options)
