"""Dense-feature maps for CLIP ViT hosts: the score of each patch's own joint-space embedding.

CLIP's last-layer patch tokens localise poorly; training-free remedies read the last block
differently: its value embeddings (MaskCLIP, Zhou et al. ECCV 2022) or self-self attention
(CLIP Surgery, Li et al. 2023; SCLIP; ClearCLIP, Lan et al. ECCV 2024), without the block's
residual and MLP (see ``OpenClipAdapter.dense_embeddings``). Each patch embedding is scored by
the same target as the image embedding (the cosine with a phrase's text embedding, or with a
gallery embedding), so the map says which patches, on their own, carry what the target asks.

No gradient is taken: one forward per image. ``temperature`` turns each map into a softmax over
its patches (as the head-free ``similarity`` phrase map does); ``None`` keeps the raw scores.
The defaults (key-key attention, the penultimate block, temperature 0.02) were chosen on
validation identities of an unused SynthPedes seed; the measurement is in docs/attributions.md.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from reid_explain.errors import InputError
from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.attribution import Attribution
from reid_explain.plugin_api.targets import Target


class DenseSimilarity(Attribution):
    """Each patch's dense joint-space embedding scored by the target (MaskCLIP / ClearCLIP)."""

    name = "dense_similarity"
    description = "per-patch CLIP embeddings (value or self-self attention) scored by the target"
    requires = frozenset({"dense"})
    needs_parameter_gradients = False

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  features: str = "kk", block: int | None = None,
                  temperature: float | None = 0.02) -> Tensor:
        if temperature is not None and not temperature > 0:
            raise InputError(f"temperature must be positive or None, got {temperature!r}")
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        h, w = self.adapter.grid_size(size)
        if block is None:  # the penultimate block where there is one (docs/attributions.md)
            block = -2 if len(self.adapter.blocks()) > 1 else -1
        with torch.no_grad():
            dense = self.adapter.dense_embeddings(inputs, features=features, block=block)
            batch, n, dim = dense.shape
            args = tuple(a.repeat_interleave(n, dim=0) for a in target.args)
            scores = target(dense.reshape(batch * n, dim), *args).reshape(batch, n)
        if temperature is not None:
            scores = (scores / temperature).softmax(dim=1)
        return scores.reshape(batch, h, w)


@hookimpl
def register_attributions(register):
    register(DenseSimilarity)
