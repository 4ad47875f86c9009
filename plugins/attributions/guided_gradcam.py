"""Guided Grad-CAM (Selvaraju et al. 2017, section 3.1) on the similarity score, via Captum.

Grad-CAM is as coarse as its layer: an OSNet's last map is 8x4 at 128x64, so its peak is a
cell's centre, which on a thin or off-centre person is often background. The Grad-CAM paper's
own remedy multiplies the upsampled Grad-CAM map by guided backpropagation, whose pixel-level
gradients follow the image's edges: Captum's ``GuidedGradCam``. The map is the magnitude of
that product summed over colour channels.

Guided backpropagation alone barely depends on the weights (Adebayo et al. 2018); the Grad-CAM
factor is what carries the model here, and the randomisation check (``sanity``) is the place to
see how much. It overrides the gradient of ``nn.ReLU`` modules only: a host whose ReLUs are
functional (or that has none, a CLIP ViT) gets plain input gradients times Grad-CAM.

Options: ``interpolate_mode`` (how the Grad-CAM map is upsampled, Captum's; default
``"bilinear"``), ``absolute`` (True: magnitude; False: the signed sum).
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor, nn

from reid_explain.attribution import Attribution
from reid_explain.hookspecs import hookimpl
from reid_explain.targets import Target


class _Score(nn.Module):
    """The similarity score as a module holding the host, so guided backpropagation finds
    the host's ReLU modules."""

    def __init__(self, host: nn.Module, forward: Any) -> None:
        super().__init__()
        self.host = host
        self._forward = forward

    def forward(self, inputs: Tensor, *args: Tensor) -> Tensor:
        return self._forward(inputs, *args)


class GuidedGradCAM(Attribution):
    """Upsampled Grad-CAM times guided-backpropagation gradients, per pixel."""

    name = "guided_gradcam"
    needs_parameter_gradients = False

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  interpolate_mode: str = "bilinear", absolute: bool = True,
                  **options: Any) -> Tensor:
        from captum.attr import GuidedGradCam  # lazy: plugins load fast

        if baselines is not None:
            raise ValueError("guided_gradcam takes no baselines")
        score = _Score(self.adapter.model, self.forward_func(target))
        with self.adapter.spatial_tap() as layer, warnings.catch_warnings():
            # Captum announces the ReLU hooks it sets (and removes) on every call
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            maps = GuidedGradCam(score, layer).attribute(
                inputs, additional_forward_args=target.args,
                interpolate_mode=interpolate_mode, **options)
        return (maps.abs() if absolute else maps).sum(dim=1)


@hookimpl
def register_attributions(register):
    register(GuidedGradCAM)
