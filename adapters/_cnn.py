"""Shared machinery of adapters for CNN hosts: a real spatial layer with (B, C, h, w) output."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from reid_explain.adapter import Adapter, resolve_module
from reid_explain.errors import AdapterError


def pool_embedding(output: Any, model: nn.Module) -> Tensor:
    """A host's forward output as ``(B, D)``: 4-D feature maps are average-pooled."""
    if isinstance(output, (tuple, list)):
        raise AdapterError(f"{type(model).__name__} returned a {type(output).__name__} in eval "
                           "mode; pass embed=callable(model, images) -> (B, D) tensor")
    if output.dim() == 4:
        return output.mean(dim=(2, 3))
    if output.dim() != 2:
        raise AdapterError(f"{type(model).__name__} returned shape {tuple(output.shape)}; "
                           "expected (B, D) embeddings")
    return output


def probe_output_shape(model: nn.Module, layer: nn.Module, embed: Any,
                       image_size: tuple[int, int], device: torch.device) -> tuple[int, ...] | None:
    """Shape of ``layer``'s output for one dummy image through ``embed`` (no grad, eval mode,
    modes restored), or None if the layer did not run."""
    shape: list[tuple[int, ...]] = []
    handle = layer.register_forward_hook(lambda _m, _a, out: shape.append(tuple(out.shape)))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        with torch.no_grad():
            embed(torch.zeros(1, 3, *image_size, device=device))
    finally:
        handle.remove()
        for m, mode in modes.items():
            m.training = mode
    return shape[0] if shape else None


def probe_spatial_layer(model: nn.Module, image_size: tuple[int, int]) -> str:
    """Name of the last top-level child that outputs a spatial map (``conv5``, ``layer4``).

    One no-grad forward in eval mode on a dummy image; modes are restored afterwards.
    """
    outputs: dict[str, tuple[int, ...]] = {}
    handles = []
    order: list[str] = []
    for name, child in model.named_children():
        def hook(_m: nn.Module, _a: Any, out: Any, _name: str = name) -> None:
            if isinstance(out, Tensor):
                outputs[_name] = tuple(out.shape)
                order.append(_name)
        handles.append(child.register_forward_hook(hook))
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        with torch.no_grad():
            model(torch.zeros(1, 3, *image_size, device=device))
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes.items():
            m.training = mode
    # a spatial map has more than one cell: global pooling layers also return (B, C, 1, 1)
    four_d = [n for n in order if len(outputs[n]) == 4 and outputs[n][2] * outputs[n][3] > 1]
    if not four_d:
        raise AdapterError(f"{type(model).__name__} has no top-level child with a spatial "
                           "(B, C, h, w) output; pass layer='name.of.a.conv.layer'")
    return four_d[-1]


class CNNAdapter(Adapter):
    """A host whose spatial layer is a real module with (B, C, h, w) output."""

    probe_size: tuple[int, int] = (256, 128)

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 image_size: tuple[int, int] | None = None, **options: Any) -> None:
        super().__init__(model, **options)
        if image_size is not None:
            self.probe_size = tuple(image_size)  # type: ignore[assignment]
        if layer is None:
            layer = probe_spatial_layer(model, self.probe_size)
        self.layer_name = layer if isinstance(layer, str) else type(layer).__name__
        self.layer = resolve_module(model, layer)
        self._grids: dict[tuple[int, int], tuple[int, int]] = {}

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        key = (int(image_size[0]), int(image_size[1]))
        if key not in self._grids:
            shape = probe_output_shape(self.model, self.layer, self._embed_image, key,
                                       self.device)
            if shape is None or len(shape) != 4:
                raise AdapterError(f"layer {self.layer_name!r} of {type(self.model).__name__} "
                                   f"gave output shape {shape}; a spatial layer must output "
                                   "(B, C, h, w)")
            self._grids[key] = (shape[2], shape[3])
        return self._grids[key]

    @contextlib.contextmanager
    def spatial_tap(self) -> Iterator[nn.Module]:
        yield self.layer

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "layer": self.layer_name}
