"""LayerCAM (Jiang et al. 2021) on the similarity score, fused over several stages.

Grad-CAM weighs each channel of the last feature map by its mean gradient, so every cell of a
channel gets the same weight and the map is as coarse as that layer (8x4 for an OSNet at
128x64). LayerCAM weighs each *cell* by its own positive gradient, ``relu(dS/dA) * A`` summed
over channels, which keeps finer layers usable; maps of several stages, each scaled to a maximum
of 1 and upsampled to the finest one's grid, are averaged (the paper's fusion). The per-stage
products are Captum's ``LayerGradientXActivation`` (for the non-negative activations after a
ReLU, ``relu(grad) * act == relu(grad * act)``).

Options: ``layers`` (module names, fine to coarse or any order; default: the host's spatial
layer and the stage before it whose grid is at most ``max_factor`` times finer per axis and
whose output every path to the embedding runs through, found by the adapter's probes),
``max_factor`` (2).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.attribution import Attribution
from reid_explain.plugin_api.targets import Target


class LayerCAM(Attribution):
    """Cell-wise positive-gradient x activation maps of several stages, fused."""

    name = "layercam"
    needs_parameter_gradients = False
    requires = frozenset({"stages"})

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  layers: Sequence[str] | None = None, max_factor: int = 2,
                  **options: Any) -> Tensor:
        from captum.attr import LayerGradientXActivation  # lazy: plugins load fast

        if baselines is not None:
            raise ValueError("layercam takes no baselines")
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        names = list(layers) if layers else self.adapter.stage_layers(size, max_factor)
        per_layer = LayerGradientXActivation(self.forward_func(target),
                                             self.host_modules(names)).attribute(
            inputs, additional_forward_args=target.args, **options)
        if isinstance(per_layer, Tensor):
            per_layer = [per_layer]
        maps = [m.clamp_min(0).sum(dim=1) for m in per_layer]
        finest = max((tuple(m.shape[-2:]) for m in maps), key=lambda s: s[0] * s[1])
        fused = torch.zeros(len(inputs), *finest, dtype=maps[0].dtype, device=maps[0].device)
        for m in maps:
            m = m / m.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
            if tuple(m.shape[-2:]) != finest:
                m = F.interpolate(m[:, None], size=finest, mode="bilinear",
                                  align_corners=False)[:, 0]
            fused += m
        return fused / len(maps)


@hookimpl
def register_attributions(register):
    register(LayerCAM)
