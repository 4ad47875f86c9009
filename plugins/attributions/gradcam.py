"""Grad-CAM on the similarity score, through Captum's ``LayerGradCam``.

The layer is the adapter's spatial tap: a CNN's last feature map, or a ViT's patch tokens
reshaped into ``(B, C, h, w)`` (Captum reads dim 1 as channels, so raw tokens would be wrong).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from reid_explain.attribution import Attribution
from reid_explain.hookspecs import hookimpl
from reid_explain.targets import Target


class GradCAM(Attribution):
    """Grad-CAM (Selvaraju et al. 2017): channel-weighted activations of the spatial layer."""

    name = "gradcam"

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  relu_attributions: bool = True, **options: Any) -> Tensor:
        if baselines is not None:
            raise ValueError("gradcam takes no baselines")
        from captum.attr import LayerGradCam  # lazy: plugins load fast

        with self.adapter.spatial_tap() as layer:
            cam = LayerGradCam(self.forward_func(target), layer)
            maps = cam.attribute(inputs, additional_forward_args=target.args,
                                 relu_attributions=relu_attributions, **options)
        return maps[:, 0]


@hookimpl
def register_attributions(register):
    register(GradCAM)
