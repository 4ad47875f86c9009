"""Adapters for open_clip CLIP models: ViT image towers (``open_clip``) and CNN image towers
(``open_clip_cnn``: ModifiedResNet RN50/RN101 with an attention pool, timm ConvNeXt towers),
both with the text tower.

A CNN tower is explained at its last spatial map before pooling (``visual.layer4`` of RN50,
whose attention pool mixes every cell into the embedding), found by the same module-tree probe
as any CNN host; its text side is the ViT adapter's.

Attention capture: open_clip blocks call ``nn.MultiheadAttention`` with ``need_weights=False``;
a forward pre-hook switches on ``need_weights=True, average_attn_weights=False`` and a forward
hook records the per-head weights. PyTorch returns them as a *view* of the probabilities that
``bmm`` used, so gradients are taken w.r.t. the view's base (shape ``(B*heads, N, N)``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from reid_explain.errors import AdapterError
from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.adapter import AttentionCapture

from ._cnn import CNNAdapter
from ._vit import ViTAdapter

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


#: ``dense_embeddings`` feature kinds: the block's own tokens, its values (MaskCLIP), and
#: self-self attention over values with queries-queries, keys-keys or values-values
DENSE_FEATURES = ("tokens", "value", "qq", "kk", "vv")


def _self_self_attention(block: nn.Module, x: Tensor, features: str) -> Tensor:
    """``block``'s attention on ``x`` (``(B, N, C)``, before ``ln_1``) with its token mixing
    replaced: identity (``"value"``) or a softmax over ``a a^T`` for ``a`` the queries, keys or
    values (``"qq"``, ``"kk"``, ``"vv"``); then ``out_proj``. No residual and no MLP."""
    attn = block.attn
    if not isinstance(attn, nn.MultiheadAttention) or attn.in_proj_weight is None:
        raise AdapterError(f"block attention is {type(attn).__name__} without a packed "
                           "in_proj; dense embeddings need nn.MultiheadAttention")
    y = block.ln_1(x)
    batch, n, width = y.shape
    heads = attn.num_heads
    q, k, v = torch.nn.functional.linear(y, attn.in_proj_weight, attn.in_proj_bias).split(
        width, dim=-1)
    q, k, v = (t.reshape(batch, n, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    if features == "value":
        mixed = v
    else:
        a = {"qq": q, "kk": k, "vv": v}[features]
        mixed = torch.nn.functional.scaled_dot_product_attention(a, a, v)
    return attn.out_proj(mixed.transpose(1, 2).reshape(batch, n, width))


def _is_open_clip_vit(model: nn.Module) -> bool:
    visual = getattr(model, "visual", None)
    return (type(model).__module__.startswith("open_clip")
            and visual is not None and hasattr(visual, "transformer")
            and hasattr(visual.transformer, "resblocks") and hasattr(visual, "conv1"))


def _is_open_clip(model: nn.Module) -> bool:
    return (type(model).__module__.startswith("open_clip") and hasattr(model, "encode_image")
            and hasattr(model, "encode_text") and getattr(model, "visual", None) is not None)


class OpenClipText:
    """The text tower of an open_clip CLIP (any image tower): tokens, text embeddings in the
    joint space, token spans, and the image tower's pixel statistics."""

    model: nn.Module
    tokenizer: Callable[[Sequence[str]], Tensor] | None = None

    def text_blocks(self) -> list[nn.Module]:
        return list(self.model.transformer.resblocks)

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        if isinstance(texts, str):
            texts = [texts]
        if self.tokenizer is not None:
            tokens = self.tokenizer(list(texts))
        else:
            import open_clip

            tokens = open_clip.tokenize(list(texts), context_length=self.model.context_length)
        return tokens.to(self.device)

    def embed_text(self, tokens: Tensor) -> Tensor:
        return self.model.encode_text(tokens)

    def text_embedding_layer(self) -> nn.Module:
        layer = getattr(self.model, "token_embedding", None)
        if layer is None:
            raise AdapterError(f"{type(self.model).__name__} has no token_embedding; token "
                               "attributions support open_clip.CLIP text towers")
        return layer

    def special_tokens(self, tokens: Tensor) -> Tensor:
        end = tokens.argmax(dim=-1, keepdim=True)  # open_clip pools at the end token (max id)
        positions = torch.arange(tokens.shape[-1], device=tokens.device).expand_as(tokens)
        return (positions == 0) | (positions >= end)

    def token_span(self, text: str, start: int, end: int) -> tuple[int, int]:
        """Token positions ``[t0, t1)`` of the characters ``text[start:end]`` in ``tokenize``'s
        output (the start token is position 0). CLIP's BPE splits words independently, so
        the tokens of a prefix ending at a word boundary are a prefix of the caption's tokens.
        """
        from open_clip.tokenizer import _tokenizer

        if not 0 <= start < end <= len(text):
            raise ValueError(f"span ({start}, {end}) outside a text of {len(text)} characters")
        t0 = 1 + len(_tokenizer.encode(text[:start]))
        t1 = 1 + len(_tokenizer.encode(text[:end]))
        last = self.model.context_length - 1  # room for the end token
        return min(t0, last), min(t1, last)

    def decode_tokens(self, tokens: Tensor) -> list[list[str]]:
        from open_clip.tokenizer import _tokenizer

        decoder = _tokenizer.decoder
        return [[decoder.get(int(t), "").replace("</w>", "") for t in row] for row in tokens]

    @property
    def pixel_mean(self) -> tuple[float, float, float]:
        return tuple(getattr(self.model.visual, "image_mean", None) or OPENAI_MEAN)

    @property
    def pixel_std(self) -> tuple[float, float, float]:
        return tuple(getattr(self.model.visual, "image_std", None) or OPENAI_STD)


class OpenClipAdapter(OpenClipText, ViTAdapter):
    """open_clip CLIP with a ViT image tower: image/text embeddings, patch grid, attention."""

    name = "open_clip"
    priority = 60
    capabilities = frozenset({"attention", "text", "token_drop", "dense"})

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 tokenizer: Callable[[Sequence[str]], Tensor] | None = None,
                 **options: Any) -> None:
        if not _is_open_clip_vit(model):
            raise AdapterError(f"{type(model).__name__} is not an open_clip model with a ViT "
                               "image tower")
        self.batch_first = getattr(model.visual.transformer, "batch_first", True)
        super().__init__(model, layer=layer, **options)
        self.num_prefix_tokens = 1
        self.tokenizer = tokenizer

    @classmethod
    def matches(cls, model: nn.Module, layer: object = None) -> bool:
        return _is_open_clip_vit(model)

    def default_token_layer(self) -> nn.Module:
        return self.model.visual.transformer.resblocks[-1].ln_1

    def vit_patch_size(self) -> tuple[int, int]:
        p = self.model.visual.patch_size
        return (p, p) if isinstance(p, int) else (int(p[0]), int(p[1]))

    def input_size(self) -> tuple[int, int] | None:
        size = self.model.visual.image_size  # its position embeddings are fixed to it
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def blocks(self) -> list[nn.Module]:
        return list(self.model.visual.transformer.resblocks)

    def _embed_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images)

    def token_sequence_module(self) -> nn.Module:
        # VisionTransformer._embeds: conv1 -> class token -> + positional -> patch_dropout
        # -> ln_pre; then transformer, _pool (attn_pool / ln_post / _global_pool), proj
        module = getattr(self.model.visual, "patch_dropout", None)
        if module is None:
            raise AdapterError(f"{type(self.model.visual).__name__} has no patch_dropout slot "
                               "after the positional embedding; token dropping needs an "
                               "open_clip VisionTransformer")
        return module

    # -- dense features -----------------------------------------------------------------------
    def dense_embeddings(self, images: Tensor, features: str = "value",
                         block: int = -1) -> Tensor:
        """``(B, h*w, D)``: one joint-space embedding per patch, from block ``block``.

        ``features`` (see :data:`DENSE_FEATURES`): ``"tokens"`` takes the last block's patch
        tokens (the host's own, whatever ``block``); the others replace that block's attention
        output and drop its residual and MLP, as the training-free dense-CLIP methods do:
        ``"value"`` its value embeddings (MaskCLIP), ``"qq"``/``"kk"``/``"vv"`` self-self
        attention over values (ClearCLIP, SCLIP, CLIP Surgery). Each then goes through
        ``ln_post`` and ``proj``.
        """
        if features not in DENSE_FEATURES:
            raise AdapterError(f"features must be one of {DENSE_FEATURES}, got {features!r}")
        visual, blocks = self.model.visual, self.blocks()
        if getattr(visual, "attn_pool", None) is not None or getattr(visual, "proj", None) is None:
            raise AdapterError(f"{type(visual).__name__} pools with an attention pool or has no "
                               "projection; dense embeddings need ln_post + proj")
        if not -len(blocks) <= block < len(blocks):
            raise AdapterError(f"block {block} is outside the {len(blocks)} blocks of "
                               f"{type(visual).__name__}")
        seen: dict[str, Tensor] = {}
        if features == "tokens":  # whatever the block: the last block's output tokens
            handle = blocks[-1].register_forward_hook(
                lambda _m, _args, out: seen.__setitem__("x", out))
        else:
            handle = blocks[block].register_forward_pre_hook(
                lambda _m, args: seen.__setitem__("x", args[0]))
        try:
            self._embed_image(images)
        finally:
            handle.remove()
        x = seen["x"] if self.batch_first else seen["x"].transpose(0, 1)  # (B, N, C)
        if features == "tokens":
            return (visual.ln_post(x) @ visual.proj)[:, self.num_prefix_tokens:]
        return self.dense_from_block_input(x, features, block)

    def dense_from_block_input(self, x: Tensor, features: str, block: int = -1) -> Tensor:
        """``(B, h*w, D)`` joint-space patch embeddings from ``x``, the ``(B, N, C)`` input of
        block ``block`` (batch first), mixed as ``features`` says (``"value"``, ``"qq"``,
        ``"kk"``, ``"vv"``; see :meth:`dense_embeddings`). Differentiable: training losses
        read it from the host's own forward (``ForwardCapture``)."""
        visual = self.model.visual
        y = _self_self_attention(self.blocks()[block], x, features)
        return (visual.ln_post(y) @ visual.proj)[:, self.num_prefix_tokens:]

    # -- attention ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def capture_attention(self, blocks: Sequence[nn.Module] | None = None
                          ) -> Iterator[AttentionCapture]:
        blocks = list(blocks) if blocks is not None else self.blocks()
        heads = blocks[0].attn.num_heads
        capture = AttentionCapture(
            as_heads=lambda t: t.reshape(-1, heads, t.shape[-2], t.shape[-1]))

        def pre(_m: nn.Module, args: Any, kwargs: dict) -> tuple[Any, dict]:
            return args, {**kwargs, "need_weights": True, "average_attn_weights": False}

        def post(_m: nn.Module, args: Any, kwargs: dict, output: Any) -> None:
            weights = output[1]
            if weights is None:
                raise AdapterError("nn.MultiheadAttention returned no weights")
            capture.tensors.append(weights._base if weights._base is not None else weights)

        handles = []
        try:
            for block in blocks:
                attn = block.attn
                if not isinstance(attn, nn.MultiheadAttention):
                    raise AdapterError(f"block attention is {type(attn).__name__}, not "
                                       "nn.MultiheadAttention; cannot capture its weights")
                handles.append(attn.register_forward_pre_hook(pre, with_kwargs=True))
                handles.append(attn.register_forward_hook(post, with_kwargs=True))
            yield capture
        finally:
            for handle in handles:
                handle.remove()


class OpenClipCNNAdapter(OpenClipText, CNNAdapter):
    """open_clip CLIP with a CNN image tower (RN50, RN101, timm ConvNeXt): image/text
    embeddings and the tower's last spatial map; no self-attention blocks to capture."""

    name = "open_clip_cnn"
    description = "open_clip CLIP with a CNN image tower (RN50, RN101, ConvNeXt)"
    priority = 59
    capabilities = frozenset({"text", "stages"})

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 tokenizer: Callable[[Sequence[str]], Tensor] | None = None,
                 image_size: tuple[int, int] | None = None, **options: Any) -> None:
        self.model = model
        self.tokenizer = tokenizer
        super().__init__(model, layer=layer, image_size=image_size, **options)

    @classmethod
    def matches(cls, model: nn.Module, layer: object = None) -> bool:
        return _is_open_clip(model) and not _is_open_clip_vit(model)

    def search_root(self) -> nn.Module:
        return self.model.visual

    def input_size(self) -> tuple[int, int] | None:
        size = getattr(self.model.visual, "image_size", None)
        if size is None:  # a timm tower: its own config
            size = getattr(getattr(self.model.visual, "trunk", None), "pretrained_cfg",
                           {}).get("input_size", (None,))[1:] or None
            return (int(size[0]), int(size[1])) if size else None
        if getattr(self.model.visual, "attnpool", None) is None:
            return None  # a tower with global pooling takes any size
        # ModifiedResNet's attention pool has position embeddings for one grid
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def _embed_image(self, images: Tensor) -> Tensor:
        return self.model.encode_image(images)


@hookimpl
def register_adapters(register):
    register(OpenClipAdapter)
    register(OpenClipCNNAdapter)
