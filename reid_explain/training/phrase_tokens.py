"""From caption phrases (character spans) to token spans and phrase embeddings."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..plugin_api.adapter import Adapter


@dataclass(frozen=True)
class PhraseIndex:
    """Flat index of the phrases of a batch: caption, token span and (optional) part name."""

    caption: Tensor  # (K,) long, which caption/image of the batch each phrase belongs to
    token_start: Tensor  # (K,) long
    token_end: Tensor  # (K,) long, exclusive
    parts: tuple[str | None, ...]
    texts: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.caption.numel())


def _span(phrase: Any) -> tuple[int, int, str | None, str]:
    if isinstance(phrase, Mapping):
        return int(phrase["start"]), int(phrase["end"]), phrase.get("part"), phrase.get("text", "")
    return int(phrase.start), int(phrase.end), getattr(phrase, "part", None), \
        getattr(phrase, "text", "")


def phrase_index(adapter: Adapter, captions: Sequence[str],
                 phrases: Sequence[Sequence[Any]] | None = None,
                 extractor: str = "rules") -> PhraseIndex:
    """Token spans of each caption's part phrases (extracted with ``extractor`` if not given).

    Phrases truncated away by the text tower's context length are dropped.
    """
    if phrases is None:
        from ..plugin_api.phrases import extract_phrases

        phrases = [extract_phrases(c, extractor=extractor) for c in captions]
    if len(phrases) != len(captions):
        raise ValueError(f"{len(phrases)} phrase lists for {len(captions)} captions")
    rows: list[tuple[int, int, int]] = []
    parts: list[str | None] = []
    texts: list[str] = []
    for i, (caption, items) in enumerate(zip(captions, phrases, strict=True)):
        for phrase in items:
            start, end, part, text = _span(phrase)
            t0, t1 = adapter.token_span(caption, start, end)
            if t1 > t0:
                rows.append((i, t0, t1))
                parts.append(part)
                texts.append(text or caption[start:end])
    index = torch.tensor(rows, dtype=torch.long).reshape(-1, 3)
    return PhraseIndex(index[:, 0], index[:, 1], index[:, 2], tuple(parts), tuple(texts))


def pool_phrases(text_tokens: Tensor, index: PhraseIndex) -> Tensor:
    """``(K, D)`` phrase embeddings: token features averaged over each phrase's span."""
    length = text_tokens.shape[1]
    positions = torch.arange(length, device=text_tokens.device)
    inside = (positions[None] >= index.token_start[:, None].to(text_tokens.device)) & \
             (positions[None] < index.token_end[:, None].to(text_tokens.device))
    weights = inside.to(text_tokens.dtype)
    weights = weights / weights.sum(dim=1, keepdim=True).clamp_min(1)
    tokens = text_tokens[index.caption.to(text_tokens.device)]  # (K, L, D)
    return torch.einsum("kl,kld->kd", weights, tokens)


PHRASE_CONTEXTS = ("caption", "isolated")


def isolated_phrase_embeddings(adapter: Adapter, capture: Any, texts: Sequence[str]) -> Tensor:
    """``(K, D)`` phrase embeddings with each phrase encoded on its own by the text tower (its
    token features pooled over the phrase's tokens), so an embedding says what the phrase says
    and nothing about the caption around it. ``capture`` (a ForwardCapture, attached) keeps the
    caption tokens it held before this extra text forward."""
    held = capture.text_tokens
    try:
        adapter.embed_text(adapter.tokenize(list(texts)))
        tokens = capture.text_tokens
    finally:
        capture.text_tokens = held
    index = phrase_index(adapter, list(texts), [[{"start": 0, "end": len(t)}] for t in texts])
    if len(index) != len(texts):
        raise ValueError("a phrase has no tokens of its own (empty text?)")
    return pool_phrases(tokens, index)
