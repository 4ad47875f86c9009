"""Attention rollout (Abnar & Zuidema 2020) for ViT hosts.

Each block's attention is fused over heads, the residual path is added as the identity and rows
are re-normalised; the product over blocks gives how much each input token flows into the class
token. The map is the class token's row over the patch tokens. It does not depend on the
target: the same map explains every pair an image is in.

Cost: one no-grad forward per distinct image (``shares_images``: a query explained against k
gallery images is run once, its map repeated per pair). The forward's embeddings are scored by
the target, so a recording target keeps them and ``explain`` need not embed those images again.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.attribution import Attribution
from reid_explain.plugin_api.targets import Target

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


def flow_matrix(attention: Tensor, head_fusion: str = "mean",
                discard_ratio: float = 0.0) -> Tensor:
    """One block's ``(B, N, N)`` flow: heads fused, weakest links dropped, identity added for
    the residual path, rows re-normalised."""
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
    return fused / fused.sum(dim=-1, keepdim=True)


def rollout(attentions: list[Tensor], head_fusion: str = "mean",
            discard_ratio: float = 0.0) -> Tensor:
    """``(B, N, N)`` rollout of per-block attentions (each ``(B, heads, N, N)``)."""
    result = None
    for attention in attentions:
        fused = flow_matrix(attention, head_fusion, discard_ratio)
        result = fused if result is None else fused @ result
    if result is None:
        raise ValueError("no attention was captured")
    return result


def class_token_rollout(attentions: list[Tensor], head_fusion: str = "mean",
                        discard_ratio: float = 0.0) -> Tensor:
    """``(B, 1, N)``: the class token's row of :func:`rollout`, and only it.

    Row 0 of ``A_L ... A_1`` is ``e_0^T A_L ... A_1``: a row vector times each block's flow,
    last block first, ``N^2`` per block instead of the ``N^3`` of the whole product.
    """
    if not attentions:
        raise ValueError("no attention was captured")
    row = None
    for attention in reversed(attentions):
        fused = flow_matrix(attention, head_fusion, discard_ratio)
        row = fused[:, :1] if row is None else row @ fused
    return row


class AttentionRollout(Attribution):
    """Attention rollout: class-token attention flow through all blocks (target-independent)."""

    name = "rollout"
    needs_parameter_gradients = False
    requires = frozenset({"attention"})
    shares_images = True

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  head_fusion: str = "mean", discard_ratio: float = 0.0,
                  image_index: Tensor | None = None) -> Tensor:
        if baselines is not None:
            raise ValueError("rollout takes no baselines")
        with torch.no_grad(), self.adapter.capture_attention() as capture:
            embeddings = self.adapter.embed_image(inputs)
            rolled = class_token_rollout(capture.maps(), head_fusion=head_fusion,
                                         discard_ratio=discard_ratio)
            capture.tensors.clear()
            maps = self.adapter.class_token_map(rolled, tuple(inputs.shape[-2:]))
            if image_index is not None:  # one row per pair, from the image's single forward
                index = image_index.to(maps.device)
                maps, embeddings = maps.index_select(0, index), embeddings.index_select(0, index)
            # the map ignores the score, but scoring lets a recording target keep the
            # embeddings of this pass (explain then need not embed these images again)
            target(embeddings)
        return maps


@hookimpl
def register_attributions(register):
    register(AttentionRollout)
