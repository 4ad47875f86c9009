"""PPIM: patch-phrase interaction module (InterPartAbility's phrase supervision).

Each part phrase of a caption ("a red short-sleeved shirt") is embedded by the host's own text
tower (token features in the joint space, averaged over the phrase's tokens) and attends over
the patch tokens of an image (joint space) through a light head: two linear maps and a
temperature. The attention is the phrase's map; the attended region feature should match the
phrase. Supervision is contrastive:

* phrase → image: the region a phrase pools from its own image must match the phrase better
  than the regions it pools from the other images of the batch (images of the same identity are
  not used as negatives);
* phrase → phrase (weight ``phrase_contrast_weight``): within its own image, a phrase's region
  must match that phrase better than the caption's other phrases, so "red shirt" and "black
  trousers" look at different patches.

Only the head is new; it trains the host's patch tokens and text tower through the losses and
costs nothing at inference (retrieval uses the global embeddings). See docs/interpartability.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reid_explain.hookspecs import hookimpl
from reid_explain.training.capture import ForwardCapture, OwnsCapture
from reid_explain.training.phrase_tokens import PhraseIndex, phrase_index, pool_phrases
from reid_explain.training_hooks import TrainingLoss


class PPIMHead(nn.Module):
    """Phrase-conditioned attention over patches, and the pooled region per (phrase, image)."""

    def __init__(self, dim: int, proj_dim: int | None = None, temperature: float = 0.1) -> None:
        super().__init__()
        proj_dim = proj_dim or dim
        self.phrase_proj = nn.Linear(dim, proj_dim)
        self.patch_proj = nn.Linear(dim, proj_dim)
        if proj_dim == dim:  # start as the head-free phrase-patch similarity
            for layer in (self.phrase_proj, self.patch_proj):
                nn.init.eye_(layer.weight)
                nn.init.zeros_(layer.bias)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1.0 / temperature)))
        self.match_log_scale = nn.Parameter(torch.tensor(math.log(1.0 / 0.07)))

    def attention(self, phrases: Tensor, patches: Tensor) -> Tensor:
        """``(K, D)`` phrases x ``(B, N, D)`` patches -> ``(K, B, N)`` distributions over N."""
        q = F.normalize(self.phrase_proj(phrases), dim=-1)
        k = F.normalize(self.patch_proj(patches), dim=-1)
        logits = torch.einsum("kd,bnd->kbn", q, k) * self.log_scale.exp().clamp(max=100)
        return logits.softmax(dim=-1)

    def regions(self, attention: Tensor, patches: Tensor) -> Tensor:
        """``(K, B, N)`` attention, ``(B, N, D)`` patches -> ``(K, B, D)`` region features."""
        return torch.einsum("kbn,bnd->kbd", attention, patches)

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
                 phrase_extractor: str = "rules", patch_block: int | None = None,
                 capture: ForwardCapture | None = None) -> None:
        super().__init__(adapter, proj_dim=proj_dim, temperature=temperature,
                         phrase_contrast_weight=phrase_contrast_weight, weight=weight,
                         phrase_extractor=phrase_extractor, patch_block=patch_block)
        #: None: the final patch tokens; -2: the output of the second-to-last block (the last
        #: block's attention mixes every patch with the rest, blurring where a phrase is)
        self.patch_block = patch_block
        dim = int(adapter.model.embed_dim if hasattr(adapter.model, "embed_dim")
                  else adapter.model.visual.output_dim)
        self.head = PPIMHead(dim, proj_dim, temperature).to(adapter.device)
        self.weight = weight
        self.phrase_contrast_weight = phrase_contrast_weight
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
        attention = self.head.attention(phrases, patches)  # (K, B, N)
        regions = self.head.regions(attention, patches)
        logits = self.head.match(phrases, regions)  # (K, B)
        pids = batch.get("pids")
        if pids is not None:  # same identity, other image: not a negative
            pids = torch.as_tensor(pids, device=patches.device)
            same = pids[owner][:, None] == pids[None, :]
            own = torch.zeros_like(same)
            own[torch.arange(len(owner)), owner] = True
            logits = logits.masked_fill(same & ~own, float("-inf"))
        image_loss = F.cross_entropy(logits, owner)
        total = image_loss
        parts = {"ppim_image": image_loss.item()}
        if self.phrase_contrast_weight > 0:
            own_regions = regions[torch.arange(len(owner)), owner]  # (K, D)
            cos = F.normalize(own_regions, dim=-1) @ F.normalize(phrases, dim=-1).T
            cos = cos * self.head.match_log_scale.exp().clamp(max=100)
            same_caption = owner[:, None] == owner[None, :]
            cos = cos.masked_fill(~same_caption, float("-inf"))
            phrase_loss = F.cross_entropy(cos, torch.arange(len(owner), device=cos.device))
            total = total + self.phrase_contrast_weight * phrase_loss
            parts["ppim_phrase"] = phrase_loss.item()
        self.last_attention = attention[torch.arange(len(owner)), owner]  # (K, N)
        self.last_index = index
        self.last = parts
        return self.weight * total

    # -- inference ----------------------------------------------------------------------------
    def phrase_maps(self, patches: Tensor, phrases: Tensor) -> Tensor:
        """``(K, N)`` map of each phrase over the patches of its own image (``(K, N, D)``)."""
        q = F.normalize(self.head.phrase_proj(phrases), dim=-1)
        k = F.normalize(self.head.patch_proj(patches), dim=-1)
        logits = torch.einsum("kd,knd->kn", q, k) * self.head.log_scale.exp().clamp(max=100)
        return logits.softmax(dim=-1)


@hookimpl
def register_training_losses(register):
    register(PPIM)
