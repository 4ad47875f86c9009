"""Shared machinery of adapters for ViT hosts: patch-token grid tap and attention capture."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from torch import nn

from reid_explain.adapter import Adapter, TokenGridTap, resolve_module


class ViTAdapter(Adapter):
    """A ViT host: tokens of ``token_layer`` (default: the last block's first norm) on a grid.

    The default spatial layer is the *input* of the last block's attention: after the last block
    only the class token reaches the embedding, so patch tokens there have no gradient.
    """

    capabilities = frozenset({"attention"})
    num_prefix_tokens = 1
    batch_first = True

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 **options: Any) -> None:
        super().__init__(model, **options)
        token_layer = resolve_module(model, layer) if layer is not None else None
        self.token_layer = token_layer if token_layer is not None else self.default_token_layer()
        self.layer_name = layer if isinstance(layer, str) else None
        self._tap = TokenGridTap(self, self.token_layer, batch_first=self.batch_first)

    def default_token_layer(self) -> nn.Module:
        raise NotImplementedError

    def vit_patch_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        ph, pw = self.vit_patch_size()
        return int(image_size[0]) // ph, int(image_size[1]) // pw

    def patch_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return self.vit_patch_size()

    @contextlib.contextmanager
    def spatial_tap(self) -> Iterator[nn.Module]:
        with self._tap.active() as tap:
            yield tap

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "blocks": len(self.blocks()),
                "patch_size": self.vit_patch_size(), "prefix_tokens": self.num_prefix_tokens}
