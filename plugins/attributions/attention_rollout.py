"""Attention rollout (Abnar & Zuidema 2020) for ViT hosts.

Each block's attention is fused over heads, the residual path is added as the identity and rows
are re-normalised; the product over blocks gives how much each input token flows into the class
token. The map is the class token's row over the patch tokens. It does not depend on the
target: the same map explains every pair an image is in.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reid_explain.attribution import Attribution
from reid_explain.hookspecs import hookimpl
from reid_explain.targets import Target

FUSIONS = ("mean", "max", "min")


def fuse_heads(attention: Tensor, head_fusion: str) -> Tensor:
    """``(B, heads, N, N)`` -> ``(B, N, N)``."""
    if head_fusion == "mean":
        return attention.mean(dim=1)
    if head_fusion == "max":
        return attention.amax(dim=1)
    if head_fusion == "min":
        return attention.amin(dim=1)
    raise ValueError(f"head_fusion must be one of {FUSIONS}, got {head_fusion!r}")


def rollout(attentions: list[Tensor], head_fusion: str = "mean",
            discard_ratio: float = 0.0) -> Tensor:
    """``(B, N, N)`` rollout of per-block attentions (each ``(B, heads, N, N)``)."""
    result = None
    for attention in attentions:
        fused = fuse_heads(attention.float(), head_fusion)
        if discard_ratio > 0:  # drop the weakest links, never the class token's own
            flat = fused.flatten(1)
            k = int(flat.shape[1] * discard_ratio)
            if k:
                idx = flat.topk(k, dim=1, largest=False).indices
                drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
                drop[:, 0] = False
                fused = flat.masked_fill(drop, 0.0).view_as(fused)
        eye = torch.eye(fused.shape[-1], device=fused.device)
        fused = fused + eye
        fused = fused / fused.sum(dim=-1, keepdim=True)
        result = fused if result is None else fused @ result
    if result is None:
        raise ValueError("no attention was captured")
    return result


class AttentionRollout(Attribution):
    """Attention rollout: class-token attention flow through all blocks (target-independent)."""

    name = "rollout"
    needs_parameter_gradients = False
    requires = frozenset({"attention"})

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  head_fusion: str = "mean", discard_ratio: float = 0.0) -> Tensor:
        if baselines is not None:
            raise ValueError("rollout takes no baselines")
        with torch.no_grad(), self.adapter.capture_attention() as capture:
            self.adapter.embed_image(inputs)
        rolled = rollout(capture.maps(), head_fusion=head_fusion, discard_ratio=discard_ratio)
        return self.adapter.class_token_map(rolled, tuple(inputs.shape[-2:]))


@hookimpl
def register_attributions(register):
    register(AttentionRollout)
