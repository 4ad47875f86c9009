"""Token-drop masker (ViT hosts): removed cells leave the token sequence altogether.

A filled or blurred patch is still a token the model attends to, and one it never saw in
training; dropping the token removes the region without adding content (the removal used by
Chefer et al.'s perturbation tests and by patch-dropout training). The host runs on the shorter
sequence through the adapter's ``embed_image_without``; rows are grouped by how many cells they
drop, so equal counts (every row of one perturbation step) share a forward pass.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from reid_explain.errors import AdapterError
from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.masker import Masker

if TYPE_CHECKING:
    from reid_explain.plugin_api.interfaces import ExplainerLike


class TokenDrop(Masker):
    """Drop the patch tokens of removed cells from a ViT's sequence (the class token stays)."""

    name = "token_drop"
    requires = frozenset({"token_drop"})
    deterministic = True

    def __call__(self, images: Tensor, grid_masks: Tensor) -> Tensor:
        raise TypeError("the token_drop masker changes the token sequence, not the pixels: "
                        "use masker.embed(explainer, images, grid_masks)")

    @torch.no_grad()
    def embed(self, explainer: ExplainerLike, images: Tensor, grid_masks: Tensor,
              batch_size: int = 64) -> Tensor:
        """L2-normalised embeddings, one forward per (drop count, chunk of ``batch_size``)."""
        adapter = explainer.adapter
        if "token_drop" not in adapter.capabilities:
            raise AdapterError(f"masker 'token_drop' needs a ViT host; adapter {adapter.name!r} "
                               f"({type(explainer.model).__name__}) cannot drop tokens")
        explainer._check_open()
        if images.dim() != 4 or grid_masks.dim() != 3 or len(images) != len(grid_masks):
            raise ValueError(f"need (N, 3, H, W) images and (N, h, w) grid masks, got "
                             f"{tuple(images.shape)} and {tuple(grid_masks.shape)}")
        grid = adapter.grid_size((int(images.shape[-2]), int(images.shape[-1])))
        if tuple(grid_masks.shape[-2:]) != tuple(grid):
            raise ValueError(f"grid masks are {tuple(grid_masks.shape[-2:])}, the host's patch "
                             f"grid for these images is {tuple(grid)}")
        images = images.to(adapter.device)
        drop = grid_masks.flatten(1).to(adapter.device, torch.bool)
        counts = drop.sum(dim=1)
        out: Tensor | None = None
        with explainer.guard:
            for count in torch.unique(counts).tolist():
                rows = (counts == count).nonzero().flatten()
                for chunk in rows.split(batch_size):
                    emb = adapter.embed_image_without(images[chunk], drop[chunk]).float()
                    if out is None:
                        out = emb.new_zeros(len(images), emb.shape[-1])
                    out[chunk] = emb
        assert out is not None
        return F.normalize(out, dim=-1)


@hookimpl
def register_maskers(register):
    register(TokenDrop)
