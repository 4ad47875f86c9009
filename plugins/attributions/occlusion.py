"""Occlusion over patches: the similarity drop when each patch is replaced by a baseline.

Captum's ``FeatureAblation`` with a feature mask that gives every patch of the host's grid one
id (equal to patch-aligned ``Occlusion``), so each cell of the map is exactly one patch's effect.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.attribution import Attribution
from reid_explain.plugin_api.targets import Target


def patch_feature_mask(image_size: tuple[int, int], patch: tuple[int, int],
                       device: torch.device | None = None) -> Tensor:
    """``(1, 1, H, W)`` long mask: the row-major index of each pixel's patch."""
    height, width = image_size
    rows = torch.arange(height, device=device) // patch[0]
    cols = torch.arange(width, device=device) // patch[1]
    n_cols = math.ceil(width / patch[1])
    return (rows[:, None] * n_cols + cols[None, :])[None, None]


class PatchOcclusion(Attribution):
    """Occlusion of each patch with a baseline (default 0 = the mean colour)."""

    name = "occlusion"
    needs_parameter_gradients = False

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  patch_size: tuple[int, int] | None = None,
                  perturbations_per_eval: int = 8, **options: Any) -> Tensor:
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        patch = tuple(patch_size) if patch_size else self.adapter.patch_size(size)
        mask = patch_feature_mask(size, patch, inputs.device)
        from captum.attr import FeatureAblation  # lazy: plugins load fast

        ablation = FeatureAblation(self.forward_func(target))
        attr = ablation.attribute(inputs, baselines=0.0 if baselines is None else baselines,
                                  additional_forward_args=target.args, feature_mask=mask,
                                  perturbations_per_eval=perturbations_per_eval, **options)
        return attr[:, 0, :: patch[0], :: patch[1]]


@hookimpl
def register_attributions(register):
    register(PatchOcclusion)
