"""Phrase grounding: one map per part phrase of a caption, and part-wise matching scores.

Three kinds of phrase map, all on the host's patch grid:

* ``"ppim"``: the trained PPIM head's phrase-conditioned attention over the image's patch tokens
  (the phrase embedded as PPIM was trained to: on its own, or the caption's token features
  pooled over the phrase's span, after its ``phrase_context``);
* ``"similarity"``: the same without a head: a softmax over patches of the cosine between the
  phrase embedding (in the caption's context) and each patch token in the joint space
  (``temperature``);
* any registered image attribution (``"gradcam"``, ``"attention_relevance"``, ...): it explains
  the cosine between the image embedding and the phrase's own text embedding
  (``encode_text(phrase)``), the usual open-vocabulary use of a CLIP attribution.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import InputError
from ..plugin_api.maps import GroundingMap
from ..plugin_api.phrases import extract_phrases
from ..plugin_api.targets import CosineSimilarity
from ..training.capture import ForwardCapture
from ..training.phrase_tokens import isolated_phrase_embeddings, phrase_index, pool_phrases

if TYPE_CHECKING:
    from ..plugin_api.interfaces import ExplainerLike


@dataclass
class PhraseGrounding:
    """The maps of one caption's phrases over one image."""

    caption: str
    phrases: list[dict[str, Any]]  # start, end, text, part
    maps: GroundingMap  # one map per phrase, labels = phrase texts

    def __len__(self) -> int:
        return len(self.phrases)


def _phrase_dicts(captions: Sequence[str], phrases: Sequence[Sequence[Any]] | None,
                  extractor: str) -> list[list[dict[str, Any]]]:
    if phrases is None:
        phrases = [extract_phrases(c, extractor=extractor) for c in captions]
    out = []
    for caption, items in zip(captions, phrases, strict=True):
        rows = []
        for p in items:
            if isinstance(p, dict):
                start, end, part = int(p["start"]), int(p["end"]), p.get("part")
            else:
                start, end, part = int(p.start), int(p.end), getattr(p, "part", None)
            rows.append({"start": start, "end": end, "text": caption[start:end], "part": part})
        out.append(rows)
    return out


def _head_of(ppim: Any) -> Any:
    head = getattr(ppim, "head", ppim)
    if not hasattr(head, "phrase_proj"):
        raise InputError("method='ppim' needs the trained PPIM: explainify(model, "
                         "ppim=session), or ground(..., ppim=session.losses['ppim'] or its head)")
    return head


def _forward_phrases(explainer: ExplainerLike, images: Tensor, captions: Sequence[str],
                     phrases: list[list[dict[str, Any]]], ppim: Any) -> dict[str, Any]:
    """One captured forward of images and captions: patch tokens (at PPIM's ``patch_block``),
    the phrase index and embeddings (in PPIM's ``phrase_context``), the global embeddings."""
    adapter = explainer.adapter
    capture = ForwardCapture(adapter)
    capture.attach(patch_block=getattr(ppim, "patch_block", None))
    try:
        image_emb = adapter.embed_image(images)
        text_emb = adapter.embed_text(adapter.tokenize(list(captions)))
        patches, grid = capture.patch_tokens, capture.grid_size
        index = phrase_index(adapter, list(captions), phrases)
        if getattr(ppim, "phrase_context", "caption") == "isolated" and len(index):
            embeddings = isolated_phrase_embeddings(adapter, capture, index.texts)
        else:
            embeddings = pool_phrases(capture.text_tokens, index)
    finally:
        capture.detach()
    return {"patches": patches, "grid": grid, "index": index, "phrases": embeddings,
            "image": image_emb, "text": text_emb}


def contextual_maps(explainer: ExplainerLike, images: Tensor, captions: Sequence[str],
                    phrases: list[list[dict[str, Any]]], ppim: Any = None,
                    temperature: float = 0.1) -> list[Tensor]:
    """Per caption, ``(K, h, w)`` maps from the phrase embeddings (PPIM head or raw)."""
    with explainer.guard, torch.no_grad():
        forward = _forward_phrases(explainer, images, captions, phrases, ppim)
        patches, grid, index = forward["patches"], forward["grid"], forward["index"]
        embeddings = forward["phrases"]
        own = patches[index.caption]  # (K, N, D)
        if ppim is not None:
            maps = _head_of(ppim).own_attention(embeddings, own, grid)
        else:
            q, k = F.normalize(embeddings, dim=-1), F.normalize(own, dim=-1)
            maps = (torch.einsum("kd,knd->kn", q, k) / temperature).softmax(dim=-1)
    h, w = grid
    maps = maps.reshape(-1, h, w).cpu()
    counts = torch.bincount(index.caption, minlength=len(captions)).tolist()
    return list(maps.split(counts))


#: colour words a phrase's colour foils are drawn from (``ground(..., foils="colours")``)
FOIL_COLOURS = ("black", "white", "gray", "grey", "red", "blue", "green", "yellow", "brown",
                "purple", "pink", "orange", "beige", "navy", "blonde")


def colour_foils(text: str) -> list[str]:
    """``text`` with its first colour word replaced by each other colour of
    :data:`FOIL_COLOURS` (``[]`` when it names none): "black hair" -> "white hair", ..."""
    words = text.split()
    at = next((i for i, w in enumerate(words) if w.lower().strip(",.;") in FOIL_COLOURS), None)
    if at is None:
        return []
    own = words[at].lower().strip(",.;")
    return [" ".join([*words[:at], c, *words[at + 1:]]) for c in FOIL_COLOURS
            if c != own and {c, own} != {"gray", "grey"}]


def foil_contrast(explainer: ExplainerLike, texts: Sequence[str], embeddings: Tensor) -> Tensor:
    """Each phrase's normalised embedding minus the mean of its colour foils': the score a map
    then explains is how much the image favours this phrase over the same phrase in other
    colours, not what it shares with every colour of it (the person, the part's word)."""
    out = F.normalize(embeddings, dim=-1).clone()
    foils = [colour_foils(text) for text in texts]
    flat = [f for fs in foils for f in fs]
    if not flat:
        return out
    # every phrase's foils through the text tower at once, not one call per phrase
    encoded = F.normalize(explainer.embed_text(flat), dim=-1).split([len(fs) for fs in foils])
    for i, own in enumerate(encoded):
        if len(own):
            out[i] -= own.mean(dim=0)
    return out


def ground(explainer: ExplainerLike, images: Tensor, captions: Sequence[str] | str,
           method: str = "similarity", phrases: Sequence[Sequence[Any]] | None = None,
           ppim: Any = None, phrase_extractor: str = "rules", temperature: float | None = None,
           foils: str | None = None, **options: Any) -> list[PhraseGrounding]:
    """One :class:`PhraseGrounding` per (image, caption) row: a map per extracted phrase.

    ``temperature``: the softmax temperature of ``"similarity"`` maps (default 0.1), and passed
    on to an attribution that takes one (``dense_similarity``) when given. ``foils="colours"``
    (attribution methods): explain each phrase against its colour foils
    (:func:`foil_contrast`; docs/results.md, "Phrases explained against foil phrases")."""
    from ..core.inputs import check_images, check_texts

    if foils not in (None, "colours"):
        raise InputError(f"foils must be None or 'colours', got {foils!r}")
    if foils is not None and method in ("ppim", "similarity"):
        raise InputError(f"foils={foils!r} applies to attribution methods, not {method!r}")
    captions = check_texts(captions)
    images = check_images(images, "images", explainer.adapter)
    if len(images) != len(captions):
        raise InputError(f"{len(images)} images for {len(captions)} captions: ground() pairs "
                         "each image with its caption")
    rows = _phrase_dicts(captions, phrases, phrase_extractor)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    if method == "ppim":  # never the head-free maps under the head's name
        ppim = ppim if ppim is not None else getattr(explainer, "ppim", None)
        _head_of(ppim)
    if method in ("ppim", "similarity"):
        maps = contextual_maps(explainer, images, captions, rows,
                               ppim=ppim if method == "ppim" else None,
                               temperature=0.1 if temperature is None else temperature)
        references = [None] * len(captions)
    else:
        texts = [p["text"] for r in rows for p in r]
        owner = torch.tensor([i for i, r in enumerate(rows) for _ in r], dtype=torch.long)
        if not texts:
            maps = [torch.zeros(0, *explainer.adapter.grid_size(size)) for _ in rows]
            references = [None] * len(captions)
        else:
            if temperature is not None:
                options["temperature"] = temperature
            phrase_emb = explainer.embed_text(texts)
            target = phrase_emb if foils is None else foil_contrast(explainer, texts,
                                                                    phrase_emb)
            flat = explainer.attribute(images[owner], CosineSimilarity(target),
                                       method=method, **options)
            counts = torch.bincount(owner, minlength=len(captions)).tolist()
            maps = list(flat.split(counts))
            references = list(phrase_emb.split(counts))
    out = []
    for i, (caption, items) in enumerate(zip(captions, rows, strict=True)):
        n = len(items)
        grounding = GroundingMap(
            maps=maps[i], scores=torch.full((n,), float("nan")), method=method,
            image_size=size, grid_size=explainer.adapter.grid_size(size),
            images=images[i: i + 1].expand(n, -1, -1, -1).detach().cpu(),
            references=references[i], labels=[p["text"] for p in items],
            pixel_mean=explainer.adapter.pixel_mean, pixel_std=explainer.adapter.pixel_std)
        out.append(PhraseGrounding(caption=caption, phrases=items, maps=grounding))
    return out


@torch.no_grad()
def part_wise_similarity(explainer: ExplainerLike, images: Tensor, captions: Sequence[str],
                         ppim: Any, alpha: float = 0.5,
                         phrases: Sequence[Sequence[Any]] | None = None) -> Tensor:
    """``(T, I)`` caption-image scores: global cosine + ``alpha`` x mean over the caption's
    phrases of the cosine between the phrase and the region it attends to in the image."""
    head = _head_of(ppim)
    rows = _phrase_dicts(list(captions), phrases, "rules")
    with explainer.guard:
        forward = _forward_phrases(explainer, images, captions, rows, ppim)
        patches, index, phrase_emb = forward["patches"], forward["index"], forward["phrases"]
        image_emb = F.normalize(forward["image"], dim=-1)
        text_emb = F.normalize(forward["text"], dim=-1)
        attention = head.attention(phrase_emb, patches, forward["grid"])  # (K, I, N)
        regions = head.regions(attention, patches, forward["grid"])  # (K, I, D)
        cos = torch.einsum("kd,kid->ki", F.normalize(phrase_emb, dim=-1),
                           F.normalize(regions, dim=-1))
    part = torch.zeros(len(captions), len(images))
    part.index_add_(0, index.caption, cos.cpu())
    counts = torch.bincount(index.caption, minlength=len(captions)).clamp_min(1)
    return (text_emb @ image_emb.T).cpu() + alpha * part / counts[:, None]
