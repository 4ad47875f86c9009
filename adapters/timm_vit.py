"""Adapter for timm Vision Transformers (``vit_*``, DeiT and other ``VisionTransformer``s).

timm attention uses ``F.scaled_dot_product_attention`` when ``fused_attn`` is on, which never
materialises the attention matrix. While attention is captured, ``fused_attn`` is switched off
on each block (and restored afterwards) and a forward hook on ``attn_drop`` records the
probabilities that multiply the values.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from torch import Tensor, nn

from reid_explain.errors import AdapterError
from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.adapter import AttentionCapture

from ._vit import ViTAdapter


def _is_timm_vit(model: nn.Module) -> bool:
    return (type(model).__module__.startswith("timm.") and hasattr(model, "blocks")
            and hasattr(model, "patch_embed") and hasattr(model, "forward_features"))


class TimmViTAdapter(ViTAdapter):
    """timm ViTs: pre-logits embedding, patch grid, attention with fused attention handled."""

    name = "timm_vit"
    priority = 40

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 **options: Any) -> None:
        super().__init__(model, layer=layer, **options)
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 1))

    @classmethod
    def matches(cls, model: nn.Module, layer: object = None) -> bool:
        return _is_timm_vit(model)

    def default_token_layer(self) -> nn.Module:
        return self.model.blocks[-1].norm1

    def vit_patch_size(self) -> tuple[int, int]:
        p = self.model.patch_embed.patch_size
        return (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))

    def input_size(self) -> tuple[int, int] | None:
        embed = self.model.patch_embed
        if getattr(self.model, "dynamic_img_size", False) or \
                not getattr(embed, "strict_img_size", True) or embed.img_size is None:
            return None
        return int(embed.img_size[0]), int(embed.img_size[1])

    def blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)

    def _embed_image(self, images: Tensor) -> Tensor:
        return self.model.forward_head(self.model.forward_features(images), pre_logits=True)

    def token_sequence_module(self) -> nn.Module:
        # forward_features: patch_embed -> _pos_embed -> patch_drop -> norm_pre -> blocks
        module = getattr(self.model, "patch_drop", None)
        if module is None:
            raise AdapterError(f"{type(self.model).__name__} has no patch_drop slot after the "
                               "positional embedding; token dropping needs a timm "
                               "VisionTransformer")
        return module

    @contextlib.contextmanager
    def capture_attention(self, blocks: Sequence[nn.Module] | None = None
                          ) -> Iterator[AttentionCapture]:
        blocks = list(blocks) if blocks is not None else self.blocks()
        capture = AttentionCapture(as_heads=lambda t: t)
        handles = []
        fused: list[tuple[nn.Module, bool]] = []

        def record(_m: nn.Module, _args: Any, output: Tensor) -> None:
            capture.tensors.append(output)

        try:
            for block in blocks:
                attn = block.attn
                if not hasattr(attn, "attn_drop"):
                    raise AdapterError(f"timm block attention {type(attn).__name__} has no "
                                       "attn_drop; cannot capture its weights")
                if hasattr(attn, "fused_attn"):
                    fused.append((attn, attn.fused_attn))
                    attn.fused_attn = False
                handles.append(attn.attn_drop.register_forward_hook(record))
            yield capture
        finally:
            for handle in handles:
                handle.remove()
            for attn, flag in fused:
                attn.fused_attn = flag


@hookimpl
def register_adapters(register):
    register(TimmViTAdapter)
