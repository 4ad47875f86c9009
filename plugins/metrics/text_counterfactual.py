"""Counterfactual word removal: the text-side twin of counterfactual region masking.

For each explained (caption, image) pair, the token relevance picks three sets of the same
size among the caption's word tokens (never the start/end/padding tokens): its top-k fraction,
``n_random`` random sets and its bottom-k fraction (or, with phrase spans, the top / random /
bottom ``n_phrases`` phrases, a phrase's relevance being the sum over its tokens). Removed
tokens are replaced by the pad id in place, so the end token keeps its position (open_clip
pools the text at the end token, found as the largest id). The edited captions are re-encoded
and the drop in cosine to the pair's image embedding is reported; a faithful relevance drops
the similarity more with its top words than with random words (``gap`` > 0). All variants of
all pairs are encoded in one chunked pass. Definitions in ``docs/metrics_counterfactual.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.adapter import Adapter
from reid_explain.plugin_api.maps import TextImageExplanation
from reid_explain.plugin_api.metric import Metric, MetricContext

from .counterfactual import CounterfactualMasking, drop_values

__all__ = ["TextCounterfactualMasking", "char_spans_to_tokens", "remove_tokens"]

#: open_clip's padding id
PAD_ID = 0


def remove_tokens(tokens: Tensor, remove: Tensor, pad_id: int = PAD_ID) -> Tensor:
    """``tokens`` with the ``remove`` positions (``(N, L)`` bool) set to ``pad_id``; every other
    token, the end token included, keeps its position."""
    return tokens.masked_fill(remove.to(tokens.device), pad_id)


def char_spans_to_tokens(adapter: Adapter, text: str,
                         spans: Sequence[tuple[int, int]]) -> list[list[int]]:
    """Token positions (in ``adapter.tokenize([text])[0]``) of each ``[start, end)`` character
    span of ``text``.

    The word tokens of ``text[:start]`` and ``text[:end]`` are counted; CLIP's BPE never merges
    across words, so this is exact when spans start and end on word boundaries (SynthPedes
    phrase spans do). Positions past the context length (truncated captions) are dropped.
    """
    def n_words(prefix: str) -> int:
        if not prefix.strip():
            return 0
        tok = adapter.tokenize([prefix])
        return int((~adapter.special_tokens(tok)[0]).sum())

    full = adapter.tokenize([text])
    words = (~adapter.special_tokens(full)[0]).nonzero()[:, 0].tolist()
    out = []
    for start, end in spans:
        a, b = n_words(text[:start]), n_words(text[:end])
        out.append(words[a:b])
    return out


class TextCounterfactualMasking(Metric):
    """Similarity drop when the top-relevance words (or phrases) of a caption are removed,
    against random and bottom words (higher gap = more faithful).

    Options: ``k`` (fraction of word tokens removed, default 0.2; at least one word),
    ``phrase_spans`` (per caption index of ``text_explanation.texts``, a list of character spans
    ``(start, end)``: remove whole phrases instead of words) with ``n_phrases`` (default 1),
    ``n_random`` (default 5), ``seed`` (default ``context.seed``), ``pad_id`` (default 0),
    ``batch_size`` (captions per text forward, default 256); ``n_boot``, ``confidence``,
    ``boot_seed`` for ``summarize``. Per pair: ``base_sim``, ``top_drop``, ``random_drop`` (mean
    over seeds), ``random_drop_std``, ``bottom_drop``, ``gap``, ``n_removed`` (tokens removed by
    the top variant) and ``n_words``; drops are NaN for a pair with nothing to remove.
    """

    name = "text_counterfactual_masking"
    description = ("Counterfactual word removal: drop in caption-image similarity when the "
                   "top-relevance words are removed, vs random and bottom words")
    higher_is_better = True

    def _units(self, context: MetricContext, explanation: TextImageExplanation
               ) -> tuple[list[list[list[int]]], list[int]]:
        """Per pair, the removable units (lists of token positions) and how many to remove."""
        special = explanation.text.special.bool().cpu()
        spans = self.options.get("phrase_spans")
        units, counts = [], []
        for p, t in enumerate(explanation.pairs[:, 0].tolist()):
            words = (~special[p]).nonzero()[:, 0].tolist()
            if spans is None:
                units.append([[i] for i in words])
                k = float(self.options.get("k", 0.2))
                if not 0.0 < k <= 1.0:
                    raise ValueError(f"k must be in (0, 1], got {k}")
                counts.append(min(len(words), max(1, math.floor(k * len(words) + 0.5))))
            else:
                allowed = set(words)
                caption_spans = spans.get(t, ()) if isinstance(spans, Mapping) else spans[t]
                phrases = char_spans_to_tokens(context.explainer.adapter,
                                               explanation.texts[t], caption_spans)
                phrases = [[i for i in ph if i in allowed] for ph in phrases]
                units.append([ph for ph in phrases if ph])
                counts.append(min(len(units[-1]), int(self.options.get("n_phrases", 1))))
        return units, counts

    def _image_embeddings(self, context: MetricContext,
                          explanation: TextImageExplanation) -> Tensor:
        """The pair's image embedding: from the gallery of ``evaluate`` when it says where the
        pair's image is, else by embedding the explained images."""
        if context.gallery_embeddings is not None and context.gallery_index is not None:
            return context.gallery_embeddings[context.gallery_index.long()].float().cpu()
        image = explanation.image
        if image is None or image.images is None:
            raise ValueError("text_counterfactual_masking needs the pair images: an image map "
                             "(explain_text(method=...)) or evaluate()'s gallery embeddings")
        return context.explainer.embed(image.row_images()).cpu()

    def compute(self, context: MetricContext) -> dict[str, Tensor]:
        context.require("text_explanation", metric=self.name)
        explanation = context.text_explanation
        if explanation.text is None:
            raise ValueError("text_counterfactual_masking needs token relevance "
                             "(explain_text(text_method=...))")
        adapter = context.explainer.adapter
        relevance = explanation.text.relevance.float().cpu()
        tokens = adapter.tokenize(explanation.texts)[explanation.pairs[:, 0]].cpu()
        if tokens.shape != relevance.shape:
            raise ValueError(f"token relevance {tuple(relevance.shape)} does not match the "
                             f"tokenised captions {tuple(tokens.shape)}")
        n_pairs, length = tokens.shape
        n_random = int(self.options.get("n_random", 5))
        if n_random < 1:
            raise ValueError(f"n_random must be >= 1, got {n_random}")
        generator = torch.Generator().manual_seed(int(self.options.get("seed", context.seed)))
        units, counts = self._units(context, explanation)

        n_variants = n_random + 3  # unedited, top, random..., bottom
        remove = torch.zeros(n_variants, n_pairs, length, dtype=torch.bool)
        for p in range(n_pairs):
            score = torch.tensor([float(relevance[p, u].sum()) for u in units[p]])
            if not len(score):
                continue
            order = torch.sort(score, descending=True, stable=True).indices.tolist()
            low = torch.sort(score, stable=True).indices.tolist()
            picks = [order] + [torch.randperm(len(score), generator=generator).tolist()
                               for _ in range(n_random)] + [low]
            for v, pick in enumerate(picks, start=1):
                for u in pick[:counts[p]]:
                    remove[v, p, units[p][u]] = True
        edited = remove_tokens(tokens[None].expand(n_variants, -1, -1), remove,
                               int(self.options.get("pad_id", PAD_ID))).reshape(-1, length)

        batch_size = int(self.options.get("batch_size", 256))
        with context.explainer.guard, torch.no_grad():
            text_emb = torch.cat([
                F.normalize(adapter.embed_text(chunk.to(adapter.device)).float(), dim=-1).cpu()
                for chunk in edited.split(batch_size)]).view(n_variants, n_pairs, -1)
        image_emb = F.normalize(self._image_embeddings(context, explanation), dim=-1)
        sims = (text_emb * image_emb[None]).sum(dim=-1)
        drops = sims[:1] - sims[1:]
        drops[:, torch.tensor(counts) == 0] = float("nan")  # nothing to remove: no evidence
        return {
            **drop_values(sims, drops, n_random),
            "n_removed": remove[1].sum(dim=1).float(),
            "n_words": (~explanation.text.special.bool().cpu()).sum(dim=1).float(),
        }

    summarize = CounterfactualMasking.summarize


@hookimpl
def register_metrics(register):
    register(TextCounterfactualMasking)
