"""Grad-CAM on the similarity score, through Captum's ``LayerGradCam``.

The layer is the adapter's spatial tap: a CNN's last feature map, or a ViT's patch tokens
reshaped into ``(B, C, h, w)`` (Captum reads dim 1 as channels, so raw tokens would be wrong).

Cost: the host's parameters are frozen while it runs, so nothing before the explained layer
records a graph and the backward stops at the layer. An image explained against several
references (a query against its top-k gallery) goes through the host once up to the layer: a
forward hook repeats the layer's output per reference (``image_index``), and only the layers
after it run per pair. Rows do not interact in eval mode, so each row's map is exactly the
map of that image against that reference. Hosts whose later layers also read earlier tensors
of the image (a residual around the tapped layer) cannot take a repeated output; for them the
rows are expanded before the host instead.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.attribution import Attribution
from reid_explain.plugin_api.targets import Target


class GradCAM(Attribution):
    """Grad-CAM (Selvaraju et al. 2017): channel-weighted activations of the spatial layer."""

    name = "gradcam"
    needs_parameter_gradients = False
    shares_images = True

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  relu_attributions: bool = True, image_index: Tensor | None = None,
                  **options: Any) -> Tensor:
        if baselines is not None:
            raise ValueError("gradcam takes no baselines")
        if image_index is not None and len(image_index) > len(inputs):
            try:
                return self._grad_cam(inputs, target, relu_attributions, image_index, options)
            except RuntimeError:  # a later layer reads the image's earlier tensors too
                pass
        if image_index is not None:
            inputs = inputs[image_index.to(inputs.device)]
        return self._grad_cam(inputs, target, relu_attributions, None, options)

    def _grad_cam(self, inputs: Tensor, target: Target, relu_attributions: bool,
                  image_index: Tensor | None, options: dict[str, Any]) -> Tensor:
        from captum.attr import LayerGradCam  # lazy: plugins load fast

        with self.adapter.spatial_tap() as layer:
            handle = None
            if image_index is not None:
                index = image_index.to(inputs.device)
                # registered before Captum's own hook, so Captum sees one row per pair
                handle = layer.register_forward_hook(
                    lambda _m, _a, out: out.index_select(0, index))
            try:
                cam = LayerGradCam(self.forward_func(target), layer)
                maps = cam.attribute(inputs, additional_forward_args=target.args,
                                     relu_attributions=relu_attributions, **options)
            finally:
                if handle is not None:
                    handle.remove()
        return maps[:, 0]


@hookimpl
def register_attributions(register):
    register(GradCAM)
