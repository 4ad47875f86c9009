"""Grad-CAM on the similarity score, through Captum's ``LayerGradCam``.

The layer is the adapter's spatial tap: a CNN's last feature map, or a ViT's patch tokens
reshaped into ``(B, C, h, w)`` (Captum reads dim 1 as channels, so raw tokens would be wrong).
One exception, for CNNs at small inputs: when that map has fewer than ``min_rows`` rows (16,
the rows of a ReID backbone's last map at its standard 256x128 input), Grad-CAM explains at
the stage before it whose grid is at most twice as fine per axis (the stage LayerCAM fuses).
An OSNet at 128x64 ends in 8x4 cells of 16 pixels, and a map that coarse puts its peak at a
cell's centre, beside a thin or shifted person as often as on it (docs/results.md, issue 25:
on misaligned crops the stage at 16x8 points at the person 6.0 points [+1.7, +10.3] more often
than the image-blind reference on three held-out seeds, the last map 4.2 points less). At a
standard input nothing changes; ``min_rows=0`` always takes the last map, ``layer=`` names one.

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

import contextlib
from typing import Any

from torch import Tensor, nn

from reid_explain.errors import AdapterError
from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.adapter import Adapter
from reid_explain.plugin_api.attribution import Attribution
from reid_explain.plugin_api.targets import Target

#: the fewest grid rows Grad-CAM explains at when a finer stage exists: a ReID backbone's last
#: map at its standard 256x128 input (stride 16)
MIN_ROWS = 16


def gradcam_layer(adapter: Adapter, image_size: tuple[int, int], min_rows: int = MIN_ROWS
                  ) -> str | None:
    """The module Grad-CAM explains at for images of ``image_size``: None for the adapter's
    spatial layer, else the name of the stage before it (a CNN whose spatial map has fewer
    than ``min_rows`` rows and a stage output at most twice as fine per axis that every path
    to the embedding runs through: ``adapter.stage_before``)."""
    stage_before = getattr(adapter, "stage_before", None)  # CNN adapters (and their kin)
    if stage_before is None or "stages" not in adapter.capabilities or \
            adapter.grid_size(image_size)[0] >= min_rows:
        return None
    try:
        return stage_before(image_size, 2)
    except AdapterError:  # (B, h, w, C) stages: the spatial layer's own tap only
        return None


class GradCAM(Attribution):
    """Grad-CAM (Selvaraju et al. 2017): channel-weighted activations of the spatial layer."""

    name = "gradcam"
    needs_parameter_gradients = False
    shares_images = True

    def attribute(self, inputs: Tensor, target: Target, baselines: Any = None,
                  relu_attributions: bool = True, image_index: Tensor | None = None,
                  layer: str | None = None, min_rows: int = MIN_ROWS,
                  **options: Any) -> Tensor:
        if baselines is not None:
            raise ValueError("gradcam takes no baselines")
        size = (int(inputs.shape[-2]), int(inputs.shape[-1]))
        name = layer if layer is not None else gradcam_layer(self.adapter, size, min_rows)
        # looked up only for a named layer: this runs once per internal batch
        module = None if name is None else self.host_modules([name])[0]
        if image_index is not None and len(image_index) > len(inputs):
            try:
                return self._grad_cam(inputs, target, relu_attributions, image_index, module,
                                      options)
            except RuntimeError:  # a later layer reads the image's earlier tensors too
                pass
        if image_index is not None:
            inputs = inputs[image_index.to(inputs.device)]
        return self._grad_cam(inputs, target, relu_attributions, None, module, options)

    def _grad_cam(self, inputs: Tensor, target: Target, relu_attributions: bool,
                  image_index: Tensor | None, module: nn.Module | None,
                  options: dict[str, Any]) -> Tensor:
        from captum.attr import LayerGradCam  # lazy: plugins load fast

        tap = self.adapter.spatial_tap() if module is None else contextlib.nullcontext(module)
        with tap as layer:
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
