"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021) for ViT hosts.

For each block, the attention map is weighted by the gradient of the score w.r.t. it, negative
contributions are clipped and heads averaged: ``Ā = E_h[(∇A ⊙ A)^+]``. Relevance starts as the
identity and accumulates ``R ← R + Ā R`` from the first block to the last. The map is the class
token's row over the patch tokens. Unlike rollout it depends on the score explained.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reid_explain.attribution import Attribution
from reid_explain.hookspecs import hookimpl
from reid_explain.targets import Target


def relevance_from_attention(attentions: list[Tensor], gradients: list[Tensor]) -> Tensor:
    """``(B, N, N)`` relevance from per-block attentions and their gradients."""
    result = None
    for attention, grad in zip(attentions, gradients, strict=True):
        weighted = (grad * attention).clamp(min=0).mean(dim=1)
        if result is None:
            result = torch.eye(weighted.shape[-1], device=weighted.device).expand_as(weighted)
        result = result + weighted @ result
    if result is None:
        raise ValueError("no attention was captured")
    return result


class AttentionRelevance(Attribution):
    """Chefer et al. 2021: gradient-weighted attention, accumulated through the blocks."""

    name = "attention_relevance"
    needs_parameter_gradients = False
    requires = frozenset({"attention"})

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None) -> Tensor:
        if baselines is not None:
            raise ValueError("attention_relevance takes no baselines")
        inputs = inputs.detach().requires_grad_(True)
        with torch.enable_grad(), self.adapter.capture_attention() as capture:
            scores = self.forward_func(target)(inputs, *target.args)
        # rows are independent in eval mode, so the gradient of the sum is each row's gradient
        grads = torch.autograd.grad(scores.sum(), capture.tensors)
        attentions = [capture.as_heads(t.detach()) for t in capture.tensors]
        gradients = [capture.as_heads(g) for g in grads]
        relevance = relevance_from_attention(attentions, gradients)
        return self.adapter.class_token_map(relevance, tuple(inputs.shape[-2:]))


@hookimpl
def register_attributions(register):
    register(AttentionRelevance)
