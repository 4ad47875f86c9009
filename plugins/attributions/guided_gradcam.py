"""Guided Grad-CAM (Selvaraju et al. 2017, section 3.1) on the similarity score, via Captum.

Grad-CAM is as coarse as its layer: an OSNet's last map is 8x4 at 128x64, so its peak is a
cell's centre, which on a thin or off-centre person is often background. The Grad-CAM paper's
own remedy multiplies the upsampled Grad-CAM map by guided backpropagation, whose pixel-level
gradients follow the image's edges: Captum's ``LayerGradCam`` and ``GuidedBackprop``,
combined as Captum's ``GuidedGradCam`` combines them (which fixes Grad-CAM's ReLU on; here it
is the ``relu_attributions`` option, as for ``gradcam``). The map is that product summed over
colour channels, then its magnitude: how Captum's ``visualize_image_attr`` draws an image
attribution with ``sign="absolute_value"`` (a grey-level change of the pixel, whatever its
colour). Chosen over the magnitude of each channel summed on seed 204's validation pairs: person
energy 0.665 against 0.640 on misaligned crops and 0.665 against 0.641 on aligned ones
(docs/attributions.md).

Guided backpropagation alone barely depends on the weights (Adebayo et al. 2018); the Grad-CAM
factor is what carries the model here, and the randomisation check (``sanity``) is the place to
see how much. It overrides the gradient of ``nn.ReLU`` modules only, so it is offered for CNN
hosts that have them (capabilities ``stages`` and ``relu``: not MobileNetV2's ReLU6, ConvNeXt's
GELU, EfficientNet's SiLU) and refuses a host without any ``nn.ReLU`` module, where it would
silently be plain gradients times Grad-CAM.

Options: ``interpolate_mode`` (how the Grad-CAM map is upsampled, Captum's; default
``"bilinear"``), ``channels`` (``"abs_sum"``: the magnitude of the channel sum, default;
``"sum_abs"``: the sum of each channel's magnitude; ``"sum"``: the signed sum),
``relu_attributions`` (Grad-CAM's ReLU, default True).
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor, nn

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.attribution import Attribution
from reid_explain.plugin_api.targets import Target

#: how the colour channels of the product become one map
CHANNELS = ("abs_sum", "sum_abs", "sum")


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
    requires = frozenset({"stages", "relu"})

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  interpolate_mode: str = "bilinear", channels: str = "abs_sum",
                  relu_attributions: bool = True, **options: Any) -> Tensor:
        from captum.attr import GuidedBackprop, LayerAttribution

        if baselines is not None:
            raise ValueError("guided_gradcam takes no baselines")
        if channels not in CHANNELS:
            raise ValueError(f"guided_gradcam: channels must be one of {CHANNELS}, got "
                             f"{channels!r}")
        host = self.adapter.model
        if not any(isinstance(m, nn.ReLU) for m in host.modules()):
            raise ValueError(f"guided_gradcam: {type(host).__name__} has no nn.ReLU module, "
                             "so guided backpropagation would be plain gradients")
        forward = self.forward_func(target)
        cam = self.coarse_map(inputs, target, relu_attributions=relu_attributions, **options)
        with warnings.catch_warnings():
            # Captum announces the ReLU hooks it sets (and removes) on every call
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            # inputs that already require grad: Captum would say it set the flag itself
            guided = GuidedBackprop(_Score(host, forward)).attribute(
                inputs.detach().requires_grad_(True), additional_forward_args=target.args)
        cam = LayerAttribution.interpolate(cam, tuple(inputs.shape[-2:]),
                                           interpolate_mode=interpolate_mode)
        maps = guided * cam  # as Captum's GuidedGradCam, with Grad-CAM's ReLU an option
        if channels == "sum_abs":
            return maps.abs().sum(dim=1)
        summed = maps.sum(dim=1)
        return summed.abs() if channels == "abs_sum" else summed

    def coarse_map(self, inputs: Tensor, target: Target, relu_attributions: bool = True,
                   **options: Any) -> Tensor:
        """The class-discriminative factor, ``(B, 1, h, w)`` on its layer's grid: Grad-CAM
        at the adapter's spatial layer."""
        from captum.attr import LayerGradCam

        with self.adapter.spatial_tap() as layer:
            return LayerGradCam(self.forward_func(target), layer).attribute(
                inputs, additional_forward_args=target.args,
                relu_attributions=relu_attributions, **options)


@hookimpl
def register_attributions(register):
    register(GuidedGradCAM)
