"""PPIM: patch-phrase interaction module (InterPartAbility's phrase supervision).

Each part phrase of a caption ("a red short-sleeved shirt") is embedded by the host's own text
tower (token features in the joint space, averaged over the phrase's tokens; in the caption's
context or, ``phrase_context="isolated"``, encoded on its own) and attends over the patch
tokens of an image (joint space) through a light head: two linear maps and a temperature (and,
optionally, position keys). The attention is the phrase's map; the attended region feature
should match the phrase. Supervision is contrastive:

* phrase → image (weight ``image_contrast_weight``): the region a phrase pools from its own
  image must match the phrase better than the regions it pools from the other images of the
  batch (images of the same identity are not negatives, nor, ``image_negatives="other_text"``,
  images whose caption has the same phrase: "black hair" must not learn to look away from
  the hair to tell two black-haired people apart);
* region → phrase (weight ``phrase_contrast_weight``): a phrase's region in its own image must
  match that phrase better than the caption's other phrases (``phrase_negatives="caption"``),
  so "red shirt" and "black trousers" look at different patches, or better than every other
  phrase of the batch (``"batch"``; phrases with the same text and phrases of other captions
  of the same identity are not negatives), so a region must say what its phrase says in terms
  shared across images.

Only the head is new; it trains the host's patch tokens and text tower through the losses and
costs nothing at inference (retrieval uses the global embeddings). See docs/interpartability.md.

Three options answer defects the mechanism test found (:mod:`reid_explain.studies.
ppim_mechanism`; off by default until measured in the fine-tuned regime):
``image_negatives="other_text"`` with the identity's phrases from every caption,
``temperature_warmup`` (soft attention first, so a phrase that starts off its part can find it)
and ``whole_image_negative`` (a region must say the phrase more than the evenly pooled image).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.phrases import normalise_phrase
from reid_explain.plugin_api.training_hooks import TrainingLoss
from reid_explain.training.capture import ForwardCapture, OwnsCapture
from reid_explain.training.grid import fourier_positions
from reid_explain.training.phrase_tokens import (
    PHRASE_CONTEXTS,
    PhraseIndex,
    isolated_phrase_embeddings,
    phrase_index,
    pool_phrases,
)

PHRASE_NEGATIVES = ("caption", "batch")
IMAGE_NEGATIVES = ("other_identity", "other_text")


class PPIMHead(nn.Module):
    """Phrase-conditioned attention over patches, and the pooled region per (phrase, image).

    ``position_frequencies > 0`` adds the patches' grid coordinates (Fourier features, through a
    zero-initialised linear map) to the keys, so the head can learn where a part usually is
    ("shoes" low, "hat" high) on top of what the patch tokens say. ``position_values`` adds
    them (through another zero-initialised map) to the pooled region too, so *where* a phrase
    looks is part of what its region says, and the phrase contrast can reward looking at the
    right place for parts whose colour alone does not tell them apart ("black hair", "black
    shoes").
    """

    def __init__(self, dim: int, proj_dim: int | None = None, temperature: float = 0.1,
                 position_frequencies: int = 0, position_values: bool = False) -> None:
        super().__init__()
        proj_dim = proj_dim or dim
        self.phrase_proj = nn.Linear(dim, proj_dim)
        self.patch_proj = nn.Linear(dim, proj_dim)
        if proj_dim == dim:  # start as the head-free phrase-patch similarity
            for layer in (self.phrase_proj, self.patch_proj):
                nn.init.eye_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.position_frequencies = position_frequencies
        self.position_proj: nn.Linear | None = None
        self.position_value_proj: nn.Linear | None = None
        if position_values and position_frequencies <= 0:
            raise ValueError("ppim: position_values needs position_frequencies > 0")
        if position_frequencies > 0:
            self.position_proj = _zero_linear(4 * position_frequencies, proj_dim)
        if position_values:
            self.position_value_proj = _zero_linear(4 * position_frequencies, dim)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.match_log_scale = nn.Parameter(torch.tensor(math.log(1.0 / 0.07)))

    def _positions(self, patches: Tensor, grid: tuple[int, int] | None) -> Tensor:
        if grid is None or grid[0] * grid[1] != patches.shape[-2]:
            raise ValueError(f"the PPIM head needs the patch grid of {patches.shape[-2]} "
                             f"patches for its position keys, got {grid}")
        return fourier_positions(*grid, self.position_frequencies, patches.device)

    def keys(self, patches: Tensor, grid: tuple[int, int] | None = None) -> Tensor:
        """``(..., N, D)`` patches -> normalised keys (with positions if the head has them)."""
        keys = self.patch_proj(patches)
        if self.position_proj is not None:
            keys = keys + self.position_proj(self._positions(patches, grid))
        return F.normalize(keys, dim=-1)

    def queries(self, phrases: Tensor) -> Tensor:
        return F.normalize(self.phrase_proj(phrases), dim=-1)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp().clamp(max=100)

    def attention(self, phrases: Tensor, patches: Tensor,
                  grid: tuple[int, int] | None = None, warm: float = 1.0) -> Tensor:
        """``(K, D)`` phrases x ``(B, N, D)`` patches -> ``(K, B, N)`` distributions over N.
        ``warm`` < 1 (training only) uses ``scale ** warm``: softer, down to temperature 1."""
        logits = torch.einsum("kd,bnd->kbn", self.queries(phrases), self.keys(patches, grid))
        scale = self.scale if warm >= 1 else (self.log_scale * warm).exp().clamp(max=100)
        return (logits * scale).softmax(dim=-1)

    def own_attention(self, phrases: Tensor, patches: Tensor,
                      grid: tuple[int, int] | None = None) -> Tensor:
        """``(K, D)`` phrases x their own images' ``(K, N, D)`` patches -> ``(K, N)``."""
        logits = torch.einsum("kd,knd->kn", self.queries(phrases), self.keys(patches, grid))
        return (logits * self.scale).softmax(dim=-1)

    def regions(self, attention: Tensor, patches: Tensor,
                grid: tuple[int, int] | None = None) -> Tensor:
        """``(K, B, N)`` attention, ``(B, N, D)`` patches -> ``(K, B, D)`` region features."""
        regions = torch.einsum("kbn,bnd->kbd", attention, patches)
        if self.position_value_proj is not None:
            where = self.position_value_proj(self._positions(patches, grid))  # (N, D)
            regions = regions + torch.einsum("kbn,nd->kbd", attention, where)
        return regions

    def match(self, phrases: Tensor, regions: Tensor) -> Tensor:
        """``(K, B)`` scaled cosine of each phrase with its region in each image."""
        cos = torch.einsum("kd,kbd->kb", F.normalize(phrases, dim=-1),
                           F.normalize(regions, dim=-1))
        return cos * self.match_log_scale.exp().clamp(max=100)


class PPIM(OwnsCapture, TrainingLoss):
    """InterPartAbility's patch-phrase interaction module: contrastive phrase-patch binding."""

    name = "ppim"
    requires = frozenset({"text"})

    def __init__(self, adapter: Any, proj_dim: int | None = None, temperature: float = 0.1,
                 phrase_contrast_weight: float = 0.5, weight: float = 1.0,
                 image_contrast_weight: float = 1.0, phrase_negatives: str = "batch",
                 phrase_context: str = "isolated", position_frequencies: int = 0,
                 phrase_extractor: str = "rules", patch_block: int | None = None,
                 image_negatives: str = "other_identity", position_values: bool = False,
                 temperature_warmup: int = 0, whole_image_negative: bool = False,
                 capture: ForwardCapture | None = None) -> None:
        if image_negatives not in IMAGE_NEGATIVES:
            raise ValueError(f"ppim: image_negatives must be one of {IMAGE_NEGATIVES}, got "
                             f"{image_negatives!r}")
        if phrase_negatives not in PHRASE_NEGATIVES:
            raise ValueError(f"ppim: phrase_negatives must be one of {PHRASE_NEGATIVES}, got "
                             f"{phrase_negatives!r}")
        if phrase_context not in PHRASE_CONTEXTS:
            raise ValueError(f"ppim: phrase_context must be one of {PHRASE_CONTEXTS}, got "
                             f"{phrase_context!r}")
        super().__init__(adapter, proj_dim=proj_dim, temperature=temperature,
                         phrase_contrast_weight=phrase_contrast_weight, weight=weight,
                         image_contrast_weight=image_contrast_weight,
                         phrase_negatives=phrase_negatives, phrase_context=phrase_context,
                         position_frequencies=position_frequencies,
                         phrase_extractor=phrase_extractor, patch_block=patch_block,
                         image_negatives=image_negatives, position_values=position_values,
                         temperature_warmup=temperature_warmup,
                         whole_image_negative=whole_image_negative)
        #: None: the final patch tokens; -2: the output of the second-to-last block (the last
        #: block's attention mixes every patch with the rest, blurring where a phrase is);
        #: "embed": the patch embeddings before any block
        self.patch_block = patch_block
        dim = int(adapter.model.embed_dim if hasattr(adapter.model, "embed_dim")
                  else adapter.model.visual.output_dim)
        self.head = PPIMHead(dim, proj_dim, temperature, position_frequencies,
                             position_values).to(adapter.device)
        #: training steps over which the attention sharpens from temperature 1 to the head's
        #: own: a sharp softmax sends no gradient to the patches it ignores, so a phrase whose
        #: first maps miss its part may never find it (docs/interpartability.md)
        self.temperature_warmup = int(temperature_warmup)
        self._steps = 0
        self.whole_image_negative = bool(whole_image_negative)
        self.weight = weight
        self.phrase_contrast_weight = phrase_contrast_weight
        self.image_contrast_weight = image_contrast_weight
        self.phrase_negatives = phrase_negatives
        self.image_negatives = image_negatives
        self.phrase_context = phrase_context
        self.phrase_extractor = phrase_extractor
        self.capture = capture
        self._owns_capture = capture is None
        self.last: dict[str, float] = {}
        self.last_attention: Tensor | None = None
        self.last_index: PhraseIndex | None = None

    # -- attaching ----------------------------------------------------------------------------
    def capture_options(self) -> dict[str, Any]:
        return {"patch_block": self.patch_block}

    def parameters(self) -> Iterator[nn.Parameter]:
        return self.head.parameters()

    def state_dict(self) -> dict[str, Tensor]:
        return self.head.state_dict()

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.head.load_state_dict(state)

    # -- the loss -----------------------------------------------------------------------------
    def phrase_embeddings(self, batch: Mapping[str, Any]) -> tuple[Tensor, PhraseIndex]:
        if self.capture is None or self.capture.text_tokens is None:
            raise RuntimeError("ppim: no text forward was captured; attach() and run the host's "
                               "encode_text on the batch captions first")
        index = phrase_index(self.adapter, batch["captions"], batch.get("phrases"),
                             self.phrase_extractor)
        if self.phrase_context == "isolated":
            return isolated_phrase_embeddings(self.adapter, self.capture, index.texts), index
        return pool_phrases(self.capture.text_tokens, index), index

    def loss(self, batch: Mapping[str, Any]) -> Tensor:
        if self.capture is None or self.capture.patch_tokens is None:
            raise RuntimeError("ppim: no image forward was captured; attach() and run the "
                               "host's encode_image on the batch images first")
        patches = self.capture.patch_tokens
        phrases, index = self.phrase_embeddings(batch)
        if len(index) == 0:
            self.last = {"ppim": 0.0}
            return patches.sum() * 0.0
        owner = index.caption.to(patches.device)
        warm = 1.0
        if self.temperature_warmup > 0:
            warm = min(1.0, self._steps / self.temperature_warmup)
            if torch.is_grad_enabled():  # a training step; evaluation does not advance it
                self._steps += 1
        attention = self.head.attention(phrases, patches, self.capture.grid_size, warm)
        regions = self.head.regions(attention, patches, self.capture.grid_size)
        logits = self.head.match(phrases, regions)  # (K, B)
        pids = batch.get("pids")
        if pids is not None:
            pids = torch.as_tensor(pids, device=patches.device)
        text_id = _text_ids(index.texts, owner.device)
        skip = self.not_image_negatives(owner, pids, text_id, logits.shape[1])
        if self.image_negatives == "other_text" and batch.get("identity_phrases") is not None:
            skip |= _named_elsewhere(index.texts, batch["identity_phrases"], owner)
        logits = logits.masked_fill(skip, float("-inf"))
        if self.whole_image_negative:
            logits = torch.cat([logits, self.whole_image_logits(phrases, patches, owner)], 1)
        image_loss = F.cross_entropy(logits, owner)
        total = self.image_contrast_weight * image_loss
        parts = {"ppim_image": image_loss.item()}
        if self.phrase_contrast_weight > 0:
            own_regions = regions[torch.arange(len(owner)), owner]  # (K, D)
            cos = F.normalize(own_regions, dim=-1) @ F.normalize(phrases, dim=-1).T
            cos = cos * self.head.match_log_scale.exp().clamp(max=100)
            cos = cos.masked_fill(self.not_negatives(owner, pids, text_id), float("-inf"))
            phrase_loss = F.cross_entropy(cos, torch.arange(len(owner), device=cos.device))
            total = total + self.phrase_contrast_weight * phrase_loss
            parts["ppim_phrase"] = phrase_loss.item()
        self.last_attention = attention[torch.arange(len(owner)), owner]  # (K, N)
        self.last_index = index
        self.last = parts
        return self.weight * total

    def whole_image_logits(self, phrases: Tensor, patches: Tensor, owner: Tensor) -> Tensor:
        """``(K, 1)`` each phrase's match with its own image pooled evenly (every patch
        alike): a region that says the phrase no more than the whole image does has found
        nothing. Without it a phrase can match the background wherever its part is absent
        (measured on the mechanism task: "blue shoe" = "the solid square is not red, green
        or yellow", attention on the background)."""
        even = patches.mean(dim=1)[owner]  # (K, D)
        cos = (F.normalize(phrases, dim=-1) * F.normalize(even, dim=-1)).sum(-1)
        return (cos * self.head.match_log_scale.exp().clamp(max=100))[:, None]

    def not_image_negatives(self, owner: Tensor, pids: Tensor | None, text_id: Tensor,
                            n_images: int) -> Tensor:
        """``(K, B)`` True where image b is not a negative for phrase i (b != i's own image):
        another image of the same identity, and (``image_negatives="other_text"``) an image
        whose caption in the batch has the same phrase: "black hair" is in that image too, so
        contrasting the two would teach the phrase's region to look away from the hair."""
        skip = torch.zeros(len(owner), n_images, dtype=torch.bool, device=owner.device)
        if pids is not None:
            skip |= pids[owner][:, None] == pids[None, :]
        if self.image_negatives == "other_text":
            same_text = (text_id[:, None] == text_id[None, :]).float()
            images = F.one_hot(owner, n_images).float()
            skip |= (same_text @ images) > 0
        skip[torch.arange(len(owner)), owner] = False
        return skip

    def not_negatives(self, owner: Tensor, pids: Tensor | None, text_id: Tensor) -> Tensor:
        """``(K, K)`` True where phrase j is not a negative for phrase i's region (i != j)."""
        same_caption = owner[:, None] == owner[None, :]
        if self.phrase_negatives == "caption":
            return ~same_caption
        skip = text_id[:, None] == text_id[None, :]
        skip &= ~torch.eye(len(owner), dtype=torch.bool, device=owner.device)
        if pids is not None:  # other captions of the same identity describe the same parts
            skip |= (pids[owner][:, None] == pids[owner][None, :]) & ~same_caption
        return skip


def _zero_linear(n_in: int, n_out: int) -> nn.Linear:
    """A linear map that starts as zero: an added term that begins switched off."""
    layer = nn.Linear(n_in, n_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


def _named_elsewhere(texts: tuple[str, ...], identity_phrases: Any, owner: Tensor) -> Tensor:
    """``(K, B)`` True where batch image b's identity has the text of phrase k in any of its
    captions (``identity_phrases[b]``: normalised phrase texts), b not k's own image: "black
    hair" is in that image too even where the caption sampled into the batch does not say so."""
    wanted = [normalise_phrase(t) for t in texts]
    skip = torch.tensor([[w in named for named in identity_phrases] for w in wanted],
                        dtype=torch.bool, device=owner.device).reshape(len(texts), -1)
    skip[torch.arange(len(owner)), owner] = False
    return skip


def _text_ids(texts: tuple[str, ...], device: torch.device) -> Tensor:
    """``(K,)`` one id per distinct phrase text (case and whitespace folded)."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(normalise_phrase(t), len(ids)) for t in texts],
                        dtype=torch.long, device=device)


@hookimpl
def register_training_losses(register):
    register(PPIM)
