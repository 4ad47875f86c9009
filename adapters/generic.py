"""Adapter for any ``nn.Module``: the user names the spatial layer with ``layer=``.

The layer may output a CNN feature map ``(B, C, h, w)`` or ViT tokens ``(B, N, C)``; tokens are
reshaped into the patch grid through a tap (``num_prefix_tokens`` leading tokens are skipped).
The embedding is the model's output, average-pooled if 4-D, or what ``embed(model, images)``
returns.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

from torch import Tensor, nn

from reid_explain.errors import AdapterError
from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.adapter import TokenGridTap, grid_from_tokens, resolve_module

from ._cnn import CNNAdapter, pool_embedding, probe_output_shape


class ModuleAdapter(CNNAdapter):
    """Any nn.Module with a named spatial layer (``explainify(model, layer="...")``)."""

    name = "module"
    priority = -100

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 embed: Callable[[nn.Module, Tensor], Tensor] | None = None,
                 num_prefix_tokens: int = 0, grid_size: tuple[int, int] | None = None,
                 image_size: tuple[int, int] | None = None, **options: Any) -> None:
        if layer is None:
            raise AdapterError("the 'module' adapter needs layer='name' of the spatial layer "
                               "(a module whose output is (B, C, h, w) or ViT tokens (B, N, C))")
        self.embed_fn = embed
        self.num_prefix_tokens = num_prefix_tokens
        self.fixed_grid = grid_size
        self._token_tap: TokenGridTap | None = None
        self._layer_dims: int | None = None
        self._shapes: dict[tuple[int, int], tuple[int, ...]] = {}
        module = resolve_module(model, layer)
        super().__init__(model, layer=module, image_size=image_size, **options)
        self.layer_name = layer if isinstance(layer, str) else type(layer).__name__

    @classmethod
    def matches(cls, model: nn.Module, layer: object = None) -> bool:
        return layer is not None

    def _embed_image(self, images: Tensor) -> Tensor:
        if self.embed_fn is not None:
            return self.embed_fn(self.model, images)
        return pool_embedding(self.model(images), self.model)

    def _probe_layer_dims(self, image_size: tuple[int, int]) -> tuple[int, ...]:
        """The layer's output shape for one image of ``image_size`` (one probe per size:
        the shape depends on the architecture only)."""
        key = (int(image_size[0]), int(image_size[1]))
        if key not in self._shapes:
            shape = probe_output_shape(self.model, self.layer, self.embed_image, key,
                                       self.device)
            if shape is None or len(shape) not in (3, 4):
                raise AdapterError(f"layer {self.layer_name!r} gave output shape {shape}; "
                                   "expected (B, C, h, w) or tokens (B, N, C)")
            self._shapes[key] = tuple(shape)
        return self._shapes[key]

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        shape = self._probe_layer_dims(image_size)
        if len(shape) == 4:
            return shape[2], shape[3]
        if self.fixed_grid is not None:
            return self.fixed_grid
        return grid_from_tokens(shape[1] - self.num_prefix_tokens, image_size)

    @contextlib.contextmanager
    def spatial_tap(self) -> Iterator[nn.Module]:
        if self._layer_dims is None:
            size = self._image_size or self.probe_size
            self._layer_dims = len(self._probe_layer_dims(size))
        if self._layer_dims == 4:
            yield self.layer
            return
        if self._token_tap is None:
            self._token_tap = TokenGridTap(self, self.layer, grid_size=self.fixed_grid)
        with self._token_tap.active() as tap:
            yield tap


@hookimpl
def register_adapters(register):
    register(ModuleAdapter)
