"""Routers: which experts each sample uses.

* :class:`OracleRouter` (the paper's): gates from ground-truth attribute codes.
* :class:`LearnedRouter` (beyond the paper, for data without attributes at test time): a small
  head on the host's own embedding (a first pass with the experts off) predicts each attribute
  group's state — presence with a sigmoid (BCE), two-state and multiclass with a softmax (CE) —
  and turns the predictions into gates: ``hard`` (argmax; presence when p > 0.5: the oracle's
  gate pattern, and its fast slot path) or ``soft`` (the probabilities themselves).

:class:`PixelRouter` (beyond the paper) reads the image through its own small CNN instead, for
hosts that discard an attribute the experts need. :func:`learned_embed` routes by either.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reid_explain.data.schema import AttributeKind

from .experts import PRESENT, ExpertLayout

GateMode = Literal["hard", "soft"]


class OracleRouter:
    """Ground-truth attribute codes ``(B, A)`` (schema order, -1 unknown) -> gates ``(B, E)``."""

    def __init__(self, layout: ExpertLayout) -> None:
        self.layout = layout

    def __call__(self, codes: Tensor) -> Tensor:
        return self.layout.gates(codes)


class LearnedRouter(nn.Module):
    """Predicts attribute states from ``(B, D)`` features; gates from the predictions.

    Outputs one logit per expert: a presence group's logit is its expert's (sigmoid), a two-state
    or multiclass group's logits are a softmax over its experts, so logits line up with gates.
    """

    #: what the router reads (:func:`router_logits`): the host's expert-free embedding
    reads = "features"

    def __init__(self, layout: ExpertLayout, in_features: int, hidden: int = 128,
                 mode: GateMode = "hard") -> None:
        super().__init__()
        if mode not in ("hard", "soft"):
            raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")
        self.layout = layout
        self.mode: GateMode = mode
        self.in_features = in_features
        out = layout.num_experts
        self.head = (nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, hidden),
                                   nn.GELU(), nn.Linear(hidden, out)) if hidden
                     else nn.Sequential(nn.LayerNorm(in_features), nn.Linear(in_features, out)))

    def forward(self, features: Tensor) -> Tensor:
        """``(B, E)`` logits."""
        return self.head(features)

    def probabilities(self, logits: Tensor) -> Tensor:
        """``(B, E)``: presence sigmoid, other groups softmax within the group."""
        probs = torch.empty_like(logits)
        for group in self.layout.groups:
            cols = list(group.experts)
            if group.kind is AttributeKind.PRESENCE:
                probs[:, cols] = torch.sigmoid(logits[:, cols])
            else:
                probs[:, cols] = torch.softmax(logits[:, cols], dim=1)
        return probs

    def gates(self, logits: Tensor, mode: GateMode | None = None) -> Tensor:
        """Gates ``(B, E)`` from logits: hard one-hot per group, or soft probabilities."""
        mode = mode or self.mode
        probs = self.probabilities(logits.detach())
        if mode == "soft":
            return probs
        gates = torch.zeros_like(probs)
        for group in self.layout.groups:
            cols = list(group.experts)
            if group.kind is AttributeKind.PRESENCE:
                gates[:, cols] = (probs[:, cols] > 0.5).to(gates.dtype)
            else:
                best = probs[:, cols].argmax(dim=1)
                gates[torch.arange(len(best)), torch.tensor(cols)[best]] = 1.0
        return gates

    def predict(self, logits: Tensor) -> Tensor:
        """Predicted codes ``(B, A)`` in schema order (state indices; -1 for attributes the
        layout has no group for)."""
        codes = torch.full((logits.shape[0], len(self.layout.schema)), -1, dtype=torch.long)
        probs = self.probabilities(logits.detach()).cpu()
        for group, column in zip(self.layout.groups, self.layout.columns, strict=True):
            cols = list(group.experts)
            if group.kind is AttributeKind.PRESENCE:
                codes[:, column] = torch.where(probs[:, cols[0]] > 0.5, PRESENT, 1 - PRESENT)
            else:
                codes[:, column] = torch.tensor(group.states)[probs[:, cols].argmax(dim=1)]
        return codes

    def loss(self, logits: Tensor, codes: Tensor) -> Tensor:
        """Mean over groups of BCE (presence) / CE (others), unknown codes (-1) left out."""
        codes = torch.as_tensor(codes, dtype=torch.long, device=logits.device)
        terms = []
        for group, column in zip(self.layout.groups, self.layout.columns, strict=True):
            code = codes[:, column]
            known = code >= 0
            if not bool(known.any()):
                continue
            cols = list(group.experts)
            if group.kind is AttributeKind.PRESENCE:
                target = (code[known] == group.states[0]).to(logits.dtype)
                terms.append(F.binary_cross_entropy_with_logits(logits[known, cols[0]], target))
            else:
                terms.append(F.cross_entropy(logits[known][:, cols], code[known]))
        if not terms:
            return logits.sum() * 0.0
        return torch.stack(terms).mean()

    def config(self) -> dict[str, Any]:
        hidden = self.head[1].out_features if len(self.head) == 4 else 0
        return {"in_features": self.in_features, "hidden": hidden, "mode": self.mode}


class PixelRouter(LearnedRouter):
    """A learned router that reads the image through its own small CNN, not the host's features.

    A host may discard an attribute its experts need: the zoo CLIP keeps no linearly readable
    gender at any block (linear probes at chance), while a small CNN on the pixels reads it
    at 0.83 and the 12 Market-1501 attributes at 0.97 on held-out identities
    (``benchmarks/probe_attribute_cnn.py``, docs/mosaic.md). Four blocks of two 3x3
    convolutions (batch norm, ReLU) and a 2x2 max pool, pooled to 4x2, then one linear map to
    the expert logits; the gates, predictions and loss are :class:`LearnedRouter`'s. It needs
    more steps than the experts' schedule gives it: fit it first with
    :func:`~reid_explain.moe.train.train_router`."""

    reads = "pixels"

    def __init__(self, layout: ExpertLayout, channels: tuple[int, ...] = (24, 48, 64, 96),
                 mode: GateMode = "hard") -> None:
        nn.Module.__init__(self)
        if mode not in ("hard", "soft"):
            raise ValueError(f"mode must be 'hard' or 'soft', got {mode!r}")
        if not channels:
            raise ValueError("PixelRouter needs at least one block of channels")
        self.layout = layout
        self.mode = mode
        self.channels = tuple(int(c) for c in channels)
        layers: list[nn.Module] = []
        c_in = 3
        for c in self.channels:
            layers += [nn.Conv2d(c_in, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
                       nn.MaxPool2d(2)]
            c_in = c
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d((4, 2)), nn.Flatten())
        self.head = nn.Linear(self.channels[-1] * 8, layout.num_experts)

    def forward(self, images: Tensor) -> Tensor:
        """``(B, E)`` logits from normalised ``(B, 3, H, W)`` images."""
        return self.head(self.body(images))

    def config(self) -> dict[str, Any]:
        return {"reads": "pixels", "channels": list(self.channels), "mode": self.mode}


def router_logits(moe: Any, router: LearnedRouter, images: Tensor) -> Tensor:
    """``(B, E)`` router logits for ``images``: from the pixels (:class:`PixelRouter`) or from
    a first pass of the host with the experts off (detached: the router does not train the
    host)."""
    if router.reads == "pixels":
        return router(images)
    with moe.bypass():
        features = moe.adapter.embed_image(images)
    return router(features.detach())


def learned_embed(moe: Any, router: LearnedRouter, images: Tensor,
                  mode: GateMode | None = None) -> tuple[Tensor, Tensor]:
    """Embeddings with learned routing: the router's logits (:func:`router_logits`), then a
    pass with its gates. Returns ``(embeddings, router logits)``."""
    logits = router_logits(moe, router, images)
    with moe.route(gates=router.gates(logits, mode)):
        return moe.adapter.embed_image(images), logits


@torch.no_grad()
def predicted_codes(moe: Any, router: Any, images: torch.Tensor,
                    batch_size: int = 64) -> torch.Tensor:
    """The router's attribute predictions ``(N, A)`` (from the expert-free features, or the
    pixels for a pixel router)."""
    out = []
    for start in range(0, len(images), batch_size):
        out.append(router.predict(router_logits(moe, router, images[start:start + batch_size])))
    return torch.cat(out)
