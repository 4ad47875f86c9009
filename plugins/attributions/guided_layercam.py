"""Guided LayerCAM: guided backpropagation times the LayerCAM map, per pixel.

Guided Grad-CAM (``guided_gradcam``) multiplies pixel-level guided-backpropagation gradients by
a class-discriminative map from the last layer, 8x4 cells for an OSNet at 128x64: where that
map is coarse the product keeps edges of the background next to the person. LayerCAM
(``layercam``) draws the same score on the finer grid of the stage before the last (16x8),
fused with the last one. This method is the Guided Grad-CAM product with LayerCAM as its
class-discriminative factor, the composition pytorch-grad-cam's own example draws for any CAM
(``cam_mask * gb``). It is its own method, not a ``guided_gradcam`` option, so that a map named
Guided Grad-CAM is the Grad-CAM paper's. On seed 204 (the choice seed) it raised pointing, IoU
and the counterfactual gap over Guided Grad-CAM but not person energy, so it is offered by
name (docs/attributions.md).

Options: as ``guided_gradcam`` (``interpolate_mode``, ``channels``) and as ``layercam``
(``layers``, ``max_factor``); ``relu_attributions`` is not one (LayerCAM keeps only positive
gradients). Offered for CNN hosts with ``nn.ReLU`` modules, as ``guided_gradcam``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.targets import Target
from reid_explain.plugins.attributions.guided_gradcam import GuidedGradCAM
from reid_explain.plugins.attributions.layercam import LayerCAM


class GuidedLayerCAM(GuidedGradCAM):
    """Upsampled LayerCAM times guided-backpropagation gradients, per pixel."""

    name = "guided_layercam"
    by_default = False  # by name: not a default (docs/attributions.md, "Guided LayerCAM")

    def coarse_map(self, inputs: Tensor, target: Target, relu_attributions: bool = True,
                   **options: Any) -> Tensor:
        """LayerCAM's fused map of the last stages, ``(B, 1, h, w)`` on the finest grid."""
        if not relu_attributions:
            raise ValueError("guided_layercam: relu_attributions=False has no meaning here "
                             "(LayerCAM keeps positive gradients only)")
        return LayerCAM(self.adapter).attribute(inputs, target, **options)[:, None]


@hookimpl
def register_attributions(register):
    register(GuidedLayerCAM)
