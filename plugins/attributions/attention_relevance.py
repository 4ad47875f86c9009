"""Gradient-weighted attention relevance (Chefer, Gur & Wolf, ICCV 2021) for ViT hosts.

For each block, the attention map is weighted by the gradient of the score w.r.t. it, negative
contributions are clipped and heads averaged: ``Ā = E_h[(∇A ⊙ A)^+]``. Relevance starts as the
identity and accumulates ``R ← R + Ā R`` from the first block to the last. The map is the class
token's row over the patch tokens. Unlike rollout it depends on the score explained.

Cost: the host's parameters are frozen, and the backward stops at the first block's attention.
An image explained against several references (a query against its top-k gallery,
``shares_images``) goes through the host once: its m-th reference's score is backpropagated in
the m-th of a batch of backward passes over the same graph (``is_grads_batched``), so each row
gets exactly the gradient of its own score. Every map still needs its own backward pass.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.attribution import Attribution
from reid_explain.plugin_api.targets import Target


def relevance_from_weighted(weighted: list[Tensor]) -> Tensor:
    """``(B, N, N)`` relevance from per-block head-averaged, clipped ``(∇A ⊙ A)^+`` maps."""
    result = None
    for block in weighted:
        if result is None:
            result = torch.eye(block.shape[-1], device=block.device).expand_as(block)
        result = result + block @ result
    if result is None:
        raise ValueError("no attention was captured")
    return result


def class_token_relevance(weighted: list[Tensor]) -> Tensor:
    """``(B, 1, N)``: the class token's row of :func:`relevance_from_weighted`, and only it.

    The relevance is ``(I + Ā_L) ... (I + Ā_1)``; its row 0 is a row vector times each factor,
    last block first, ``N^2`` per block instead of the ``N^3`` of the whole product.
    """
    if not weighted:
        raise ValueError("no attention was captured")
    row = None
    for block in reversed(weighted):
        if row is None:
            row = block[:, :1].clone()
            row[..., 0] += 1
        else:
            row = row + row @ block
    return row


def relevance_from_attention(attentions: list[Tensor], gradients: list[Tensor]) -> Tensor:
    """``(B, N, N)`` relevance from per-block attentions and their gradients."""
    return relevance_from_weighted([(grad * attention).clamp(min=0).mean(dim=1)
                                    for attention, grad in zip(attentions, gradients,
                                                               strict=True)])


def occurrences(index: Tensor) -> Tensor:
    """For each row, how many earlier rows name the same image (0 for its first row)."""
    order = torch.argsort(index, stable=True)
    sorted_index = index[order]
    position = torch.arange(len(index))
    first = torch.ones(len(index), dtype=torch.bool)
    first[1:] = sorted_index[1:] != sorted_index[:-1]
    starts = torch.cummax(torch.where(first, position, torch.zeros_like(position)), 0).values
    result = torch.empty_like(index)
    result[order] = position - starts
    return result


class AttentionRelevance(Attribution):
    """Chefer et al. 2021: gradient-weighted attention, accumulated through the blocks."""

    name = "attention_relevance"
    needs_parameter_gradients = False
    requires = frozenset({"attention"})
    shares_images = True

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  image_index: Tensor | None = None) -> Tensor:
        if baselines is not None:
            raise ValueError("attention_relevance takes no baselines")
        index = (torch.arange(len(inputs)) if image_index is None
                 else image_index.long().cpu())
        slot = occurrences(index)
        repeats = int(slot.max()) + 1 if len(slot) else 1
        # sharing costs one forward per image and `repeats` backward passes over all of them;
        # expanding costs a forward and a backward per row: share when that is no dearer
        if repeats > 1 and len(inputs) * (1 + repeats) > 2 * len(index):
            inputs = inputs[index.to(inputs.device)]
            index, slot, repeats = torch.arange(len(index)), torch.zeros_like(index), 1
        return self._relevance(inputs, target, index, slot, repeats)

    def _relevance(self, inputs: Tensor, target: Target, index: Tensor, slot: Tensor,
                   repeats: int) -> Tensor:
        inputs = inputs.detach().requires_grad_(True)
        device_index = index.to(inputs.device)
        with torch.enable_grad(), self.adapter.capture_attention() as capture:
            embeddings = self.adapter.embed_image(inputs)
            scores = target(embeddings.index_select(0, device_index),
                            *[a.to(embeddings.device) for a in target.args])
        if repeats == 1:
            # each image in one row at most, and rows are independent in eval mode: the
            # gradient of the sum is each row's gradient
            grads = [g[None] for g in torch.autograd.grad(scores.sum(), capture.tensors)]
        else:
            # backward pass m carries the score of each image's m-th row (one-hot)
            selector = torch.zeros(repeats, len(index), dtype=scores.dtype, device=scores.device)
            selector[slot.to(scores.device), torch.arange(len(index), device=scores.device)] = 1
            grads = list(torch.autograd.grad(scores, capture.tensors, grad_outputs=selector,
                                             is_grads_batched=True))
        weighted = []
        for block, tensor in enumerate(capture.tensors):
            attention = capture.as_heads(tensor.detach())
            grad = capture.as_heads(grads[block].flatten(0, 1)).unflatten(0, (repeats, -1))
            grads[block] = None  # memory: one block's gradients at a time from here on
            per_pass = (grad * attention).clamp_(min=0).mean(dim=2)  # (repeats, images, N, N)
            weighted.append(per_pass[slot.to(per_pass.device), device_index])
        capture.tensors.clear()
        relevance = class_token_relevance(weighted)
        return self.adapter.class_token_map(relevance, tuple(inputs.shape[-2:]))


@hookimpl
def register_attributions(register):
    register(AttentionRelevance)
