"""InterPartAbility's attention constraint: spatially concentrated patch activations per phrase.

For each part phrase, a distribution over the image's patches says where the phrase is (the PPIM
map when PPIM trains alongside, otherwise a softmax of the cosine between the phrase and the
patch tokens at ``temperature``). The constraint reads the self-attention of the chosen last
blocks of the host ViT (averaged over heads, restricted to patch keys). ``mode="rows"``
(default): the spatial spread (variance of the patch coordinates in the unit square) or entropy
(``penalty="entropy"``) of each patch's attention row, averaged with the phrase distribution
as weights, so the patches that carry a phrase attend to a compact neighbourhood and keep their
features local. ``mode="mixture"``: the spread of the phrase-conditioned attention (the
weighted mixture of those rows), which cannot fall below the spread of the phrase distribution
itself. The phrase distribution is a fixed weighting here (detached): the constraint
trains the attention, not the phrase embeddings. With ``include_phrase_map`` the spread of the
PPIM map itself is penalised too (times ``phrase_map_weight``); that term trains what makes
the map: the PPIM head, the phrase embeddings and the patch tokens. See
docs/interpartability.md.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.training_hooks import TrainingLoss
from reid_explain.training.capture import ForwardCapture, OwnsCapture
from reid_explain.training.grid import grid_coordinates
from reid_explain.training.phrase_tokens import phrase_index, pool_phrases

PENALTIES = ("spread", "entropy")
MODES = ("rows", "mixture")


def spatial_spread(distribution: Tensor, coords: Tensor) -> Tensor:
    """``(K,)`` expected squared distance to the distribution's centre (0 = one cell)."""
    centre = distribution @ coords  # (K, 2)
    sq = ((coords[None] - centre[:, None]) ** 2).sum(-1)  # (K, N)
    return (distribution * sq).sum(-1)


def normalized_entropy(distribution: Tensor) -> Tensor:
    """``(K,)`` entropy divided by log N (1 = uniform)."""
    n = distribution.shape[-1]
    return -(distribution * distribution.clamp_min(1e-12).log()).sum(-1) / torch.log(
        torch.tensor(float(n)))


class AttentionConstraint(OwnsCapture, TrainingLoss):
    """Penalise the spatial spread (or entropy) of phrase-conditioned self-attention."""

    name = "attention_constraint"
    requires = frozenset({"attention", "text"})

    def __init__(self, adapter: Any, blocks: tuple[int, ...] = (-1,), weight: float = 1.0,
                 penalty: str = "spread", temperature: float = 0.1,
                 include_phrase_map: bool = False, phrase_map_weight: float = 1.0,
                 phrase_map_warmup: int = 0, phrase_extractor: str = "rules", mode: str = "rows",
                 capture: ForwardCapture | None = None, ppim: Any = None) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if penalty not in PENALTIES:
            raise ValueError(f"penalty must be one of {PENALTIES}, got {penalty!r}")
        super().__init__(adapter, blocks=blocks, weight=weight, penalty=penalty,
                         temperature=temperature, include_phrase_map=include_phrase_map,
                         phrase_map_weight=phrase_map_weight,
                         phrase_map_warmup=phrase_map_warmup)
        self.blocks = tuple(int(b) for b in blocks)
        self.weight = weight
        self.penalty = penalty
        self.mode = mode
        self.temperature = temperature
        self.include_phrase_map = include_phrase_map
        self.phrase_map_weight = phrase_map_weight
        #: the PPIM-map term's weight rises linearly over this many training calls, so maps
        #: can find their part before the spread penalty makes them compact
        self.phrase_map_warmup = int(phrase_map_warmup)
        self._map_calls = 0
        self.phrase_extractor = phrase_extractor
        self.capture = capture
        self._owns_capture = capture is None
        self.ppim = ppim
        self.last: dict[str, float] = {}

    @property
    def attention_blocks(self) -> tuple[int, ...]:
        return self.blocks

    def capture_options(self) -> dict[str, Any]:
        return {"attention_blocks": self.blocks}

    def _measure(self, distribution: Tensor, h: int, w: int) -> Tensor:
        if self.penalty == "entropy":
            return normalized_entropy(distribution)
        return spatial_spread(distribution, grid_coordinates(h, w, distribution.device))

    def loss(self, batch: Mapping[str, Any]) -> Tensor:
        capture = self.capture
        if capture is None or capture.patch_tokens is None or not capture.attention:
            raise RuntimeError("attention_constraint: no image forward with attention was "
                               "captured; attach() and run the host's encode_image first")
        patches = capture.patch_tokens
        n = patches.shape[1]
        h, w = capture.grid_size or (0, 0)
        if h * w != n:
            raise RuntimeError(f"attention_constraint: {n} patch tokens for a {h}x{w} grid")
        if self.ppim is not None and self.ppim.last_attention is not None:
            phrase_maps = self.ppim.last_attention  # (K, N), trains the PPIM head too
            owner = self.ppim.last_index.caption.to(patches.device)
        else:
            if capture.text_tokens is None:
                raise RuntimeError("attention_constraint: no text forward was captured")
            index = phrase_index(self.adapter, batch["captions"], batch.get("phrases"),
                                 self.phrase_extractor)
            if len(index) == 0:
                return patches.sum() * 0.0
            owner = index.caption.to(patches.device)
            phrases = F.normalize(pool_phrases(capture.text_tokens, index).detach(), dim=-1)
            cos = torch.einsum("kd,knd->kn", phrases, F.normalize(patches[owner].detach(),
                                                                  dim=-1))
            phrase_maps = (cos / self.temperature).softmax(dim=-1)
        prefix = self.adapter.num_prefix_tokens
        weights = phrase_maps.detach()
        values = []
        for attention in capture.attention:  # (B, heads, 1+N, 1+N)
            patch_attention = attention[:, :, prefix:, prefix:].mean(dim=1)  # (B, N, N)
            patch_attention = patch_attention / patch_attention.sum(-1, keepdim=True).clamp_min(
                1e-12)
            if self.mode == "mixture":
                conditioned = torch.einsum("kn,knm->km", weights, patch_attention[owner])
                values.append(self._measure(conditioned, h, w).mean())
            else:  # each phrase patch's own attention row, weighted by the phrase map
                per_row = self._measure(patch_attention.flatten(0, 1), h, w).view(-1, n)
                values.append((weights * per_row[owner]).sum(-1).mean())
        attention_term = torch.stack(values).mean()
        total = attention_term
        self.last = {"constraint_attention": attention_term.item()}
        if self.include_phrase_map and self.ppim is not None and \
                self.ppim.last_attention is not None:
            map_term = self._measure(phrase_maps, h, w).mean()
            ramp = 1.0
            if self.phrase_map_warmup > 0:
                if torch.is_grad_enabled():  # a training step; evaluation does not advance it
                    self._map_calls += 1
                ramp = min(1.0, self._map_calls / self.phrase_map_warmup)
            total = total + ramp * self.phrase_map_weight * map_term
            self.last["constraint_phrase_map"] = map_term.item()
        return self.weight * total


@hookimpl
def register_training_losses(register):
    register(AttentionConstraint)
