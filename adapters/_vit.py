"""Shared machinery of adapters for ViT hosts: patch-token grid tap, attention capture and
token dropping."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from reid_explain.errors import AdapterError
from reid_explain.plugin_api.adapter import Adapter, TokenGridTap, resolve_module


class ViTAdapter(Adapter):
    """A ViT host: tokens of ``token_layer`` (default: the last block's first norm) on a grid.

    The default spatial layer is the *input* of the last block's attention: after the last block
    only the class token reaches the embedding, so patch tokens there have no gradient.
    """

    capabilities = frozenset({"attention", "token_drop"})
    num_prefix_tokens = 1
    batch_first = True

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 image_size: tuple[int, int] | None = None, **options: Any) -> None:
        super().__init__(model, **options)
        fixed = self.input_size()
        if image_size is not None and fixed is not None and tuple(image_size) != fixed:
            raise AdapterError(f"{type(model).__name__} takes {fixed[0]}x{fixed[1]} images (its "
                               f"position embeddings are fixed to that size), not "
                               f"{image_size[0]}x{image_size[1]}; build it for your size "
                               "(timm img_size=, open_clip force_image_size=)")
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

    # -- token dropping ------------------------------------------------------------------------
    def token_sequence_module(self) -> nn.Module:
        """The module whose ``(B, N, C)`` output is the whole token sequence with positions
        added and nothing else applied yet (the host's patch-dropout slot)."""
        raise NotImplementedError

    def embed_image_without(self, images: Tensor, drop: Tensor) -> Tensor:
        """Embeddings with the patch tokens flagged in ``drop`` (``(B, h*w)`` bool, the same
        count per row) taken out of the sequence; prefix tokens always stay.

        Removing tokens instead of painting pixels is the removal a ViT has seen in training
        (patch dropout) and introduces no new content. The kept tokens are gathered, in order,
        right after the positional embedding, and the host's own forward does the rest.
        """
        drop = drop.to(images.device).bool().reshape(drop.shape[0], -1)
        if drop.shape[0] != images.shape[0]:
            raise AdapterError(f"drop has {drop.shape[0]} rows for {images.shape[0]} images")
        counts = drop.sum(dim=1)
        if (counts != counts[0]).any():
            raise AdapterError("embed_image_without needs the same number of dropped tokens "
                               "in every row; group rows by count")
        prefix = self.num_prefix_tokens
        n_patches = drop.shape[1]
        keep = drop.shape[1] - int(counts[0])
        kept = torch.argsort(drop.to(torch.int8), dim=1, stable=True)[:, :keep]
        head = torch.arange(prefix, device=drop.device).expand(drop.shape[0], prefix)
        index = torch.cat([head, kept + prefix], dim=1)

        def gather(_m: nn.Module, _args: Any, tokens: Tensor) -> Tensor:
            if tokens.dim() != 3 or tokens.shape[1] != prefix + n_patches:
                raise AdapterError(f"token sequence has shape {tuple(tokens.shape)}; expected "
                                   f"(B, {prefix} + {n_patches}, C) for this drop mask")
            return tokens.gather(1, index[..., None].expand(-1, -1, tokens.shape[-1]))

        handle = self.token_sequence_module().register_forward_hook(gather)
        try:
            return self.embed_image(images)
        finally:
            handle.remove()

    def describe(self) -> dict[str, Any]:
        layer = self.layer_name or next(
            (n for n, m in self.model.named_modules() if m is self.token_layer), "?")
        size = self.input_size()
        grid = (f"{self.grid_size(size)[0]}x{self.grid_size(size)[1]} at {size[0]}x{size[1]}"
                if size else None)
        return {**super().describe(), "layer": f"{layer} (tokens)",
                **({"grid": grid} if grid else {}), "blocks": len(self.blocks()),
                "patch_size": self.vit_patch_size(), "prefix_tokens": self.num_prefix_tokens}
