"""Routers: which experts each sample uses.

* :class:`OracleRouter` (the paper's): gates from ground-truth attribute codes.
* :class:`LearnedRouter` (beyond the paper, for data without attributes at test time): a small
  head on the host's own embedding (a first pass with the experts off) predicts each attribute
  group's state — presence with a sigmoid (BCE), two-state and multiclass with a softmax (CE) —
  and turns the predictions into gates: ``hard`` (argmax; presence when p > 0.5: the oracle's
  gate pattern, and its fast slot path) or ``soft`` (the probabilities themselves).

:func:`learned_embed` runs the two passes.
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


def learned_embed(moe: Any, router: LearnedRouter, images: Tensor,
                  mode: GateMode | None = None) -> tuple[Tensor, Tensor]:
    """Embeddings with learned routing: a first pass with the experts off gives the features the
    router reads, a second pass uses its gates. Returns ``(embeddings, router logits)``."""
    with moe.bypass():
        features = moe.adapter.embed_image(images)
    logits = router(features.detach())
    with moe.route(gates=router.gates(logits, mode)):
        return moe.adapter.embed_image(images), logits
