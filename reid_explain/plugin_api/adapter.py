"""The Adapter base class: one uniform face of a host model for explanation.

An adapter exposes what explanation needs and nothing else: image (and text) embeddings, a
spatial layer whose output is ``(B, C, h, w)`` (for ViTs a tap that reshapes patch tokens into a
grid), the self-attention of each block, and the blocks into which training plugins inject
modules. Every hook an adapter puts on the host is temporary (a context manager) or owned by the
adapter and removed by :meth:`Adapter.close`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import AdapterError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class HookSet:
    """Handles of hooks put on a host, removed together (last in, first out)."""

    def __init__(self) -> None:
        self._handles: list[Any] = []

    def add(self, handle: Any) -> Any:
        self._handles.append(handle)
        return handle

    def remove(self) -> None:
        while self._handles:
            self._handles.pop().remove()

    def __len__(self) -> int:
        return len(self._handles)


@dataclass
class AttentionCapture:
    """Self-attention probabilities recorded during one forward, one tensor per block.

    ``tensors`` are the tensors autograd used (so ``torch.autograd.grad(score, tensors)`` gives
    attention gradients); ``as_heads`` reshapes one of them, or its gradient, to
    ``(B, heads, N, N)``.
    """

    as_heads: Callable[[Tensor], Tensor]
    tensors: list[Tensor] = field(default_factory=list)

    def maps(self) -> list[Tensor]:
        return [self.as_heads(t) for t in self.tensors]


def resolve_module(model: nn.Module, layer: str | nn.Module) -> nn.Module:
    """The submodule named ``layer`` (dotted path) or ``layer`` itself if it belongs to model."""
    if isinstance(layer, nn.Module):
        if not any(m is layer for m in model.modules()):
            raise AdapterError(f"layer {type(layer).__name__} is not a submodule of "
                               f"{type(model).__name__}")
        return layer
    try:
        return model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in model.named_modules() if n][-12:]
        raise AdapterError(
            f"{type(model).__name__} has no submodule {layer!r}; name one of its modules, "
            f"e.g. {names} (see model.named_modules())") from None


def grid_from_tokens(num_tokens: int, image_size: tuple[int, int]) -> tuple[int, int]:
    """The (h, w) patch grid with h*w == num_tokens and the image's aspect ratio."""
    height, width = image_size
    w = round(math.sqrt(num_tokens * width / height))
    if w <= 0 or num_tokens % w:
        raise AdapterError(f"cannot arrange {num_tokens} patch tokens into a grid for images of "
                           f"size {height}x{width}; pass grid_size=(h, w)")
    return num_tokens // w, w


class Adapter:
    """Base class of host adapters. Subclasses set ``name`` and implement the embeddings."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: higher is asked first by ``explainify``
    priority: ClassVar[int] = 0
    #: capabilities attributions may require: "attention", "text"
    capabilities: ClassVar[frozenset[str]] = frozenset()
    #: tokens before the patch tokens (class token, registers) in ViT sequences
    num_prefix_tokens: int = 0

    def __init__(self, model: nn.Module, layer: str | nn.Module | None = None,
                 **options: Any) -> None:
        if options:
            raise AdapterError(f"adapter {self.name!r} got unknown options {sorted(options)}")
        self.model = model
        self.hooks = HookSet()
        self._image_size: tuple[int, int] | None = None

    # -- choosing -----------------------------------------------------------------------------
    @classmethod
    def matches(cls, model: nn.Module, layer: str | nn.Module | None = None) -> bool:
        """Whether this adapter knows how to explain ``model``."""
        return False

    # -- embeddings ---------------------------------------------------------------------------
    def embed_image(self, images: Tensor) -> Tensor:
        """``(B, 3, H, W)`` images -> ``(B, D)`` embeddings (not normalised)."""
        self._image_size = (int(images.shape[-2]), int(images.shape[-1]))
        return self._embed_image(images)

    def _embed_image(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        raise AdapterError(f"adapter {self.name!r} has no text tower; text explanations need a "
                           "CLIP-style host (open_clip)")

    def embed_text(self, tokens: Tensor) -> Tensor:
        """``(B, L)`` token ids -> ``(B, D)`` embeddings in the joint space."""
        raise AdapterError(f"adapter {self.name!r} has no text tower")

    def text_embedding_layer(self) -> nn.Module:
        """The token-embedding module, for token-level attributions."""
        raise AdapterError(f"adapter {self.name!r} has no text tower")

    def special_tokens(self, tokens: Tensor) -> Tensor:
        """Boolean mask of tokens that carry no words (start, end, padding)."""
        raise AdapterError(f"adapter {self.name!r} has no text tower")

    def decode_tokens(self, tokens: Tensor) -> list[list[str]]:
        raise AdapterError(f"adapter {self.name!r} has no text tower")

    # -- spatial layer ------------------------------------------------------------------------
    def grid_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) grid of the spatial layer for images of ``image_size``."""
        raise NotImplementedError

    def input_size(self) -> tuple[int, int] | None:
        """The only (H, W) the host takes (a ViT with fixed position embeddings), or None."""
        return None

    def patch_size(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """Pixels per grid cell, rounded up (the cells of occlusion over patches)."""
        h, w = self.grid_size(image_size)
        return math.ceil(image_size[0] / h), math.ceil(image_size[1] / w)

    @contextlib.contextmanager
    def spatial_tap(self) -> Iterator[nn.Module]:
        """Yield a module whose forward output is ``(B, C, h, w)`` during host forwards."""
        raise NotImplementedError
        yield  # pragma: no cover

    # -- attention ----------------------------------------------------------------------------
    def blocks(self) -> list[nn.Module]:
        """The blocks into which backbone modifications may inject modules, first to last."""
        raise AdapterError(f"adapter {self.name!r} exposes no blocks")

    @contextlib.contextmanager
    def capture_attention(self, blocks: Sequence[nn.Module] | None = None
                          ) -> Iterator[AttentionCapture]:
        """Record each block's self-attention probabilities (all blocks by default)."""
        raise AdapterError(f"adapter {self.name!r} has no self-attention to capture "
                           "(attention methods need a ViT host)")
        yield  # pragma: no cover

    def class_token_map(self, matrix: Tensor, image_size: tuple[int, int]) -> Tensor:
        """The class token's row of a ``(B, N, N)`` token-to-token matrix (rollout,
        relevance), or of that row alone (``(B, 1, N)``), over the patch tokens, as
        ``(B, h, w)`` maps."""
        h, w = self.grid_size((int(image_size[0]), int(image_size[1])))
        return matrix[:, 0, self.num_prefix_tokens:].reshape(-1, h, w)

    # -- display ------------------------------------------------------------------------------
    @property
    def pixel_mean(self) -> tuple[float, float, float]:
        return IMAGENET_MEAN

    @property
    def pixel_std(self) -> tuple[float, float, float]:
        return IMAGENET_STD

    @property
    def device(self) -> torch.device:
        for p in self.model.parameters():
            return p.device
        return torch.device("cpu")

    def close(self) -> None:
        """Remove every hook this adapter put on the host."""
        self.hooks.remove()

    def describe(self) -> dict[str, Any]:
        return {"adapter": self.name, "model": type(self.model).__name__,
                "capabilities": sorted(self.capabilities)}

    def __repr__(self) -> str:
        info = self.describe()
        details = ", ".join(f"{k}={info[k]!r}" for k in ("layer", "grid") if k in info)
        return (f"<{type(self).__name__} {info['adapter']!r} for {info['model']}"
                f"{', ' + details if details else ''}>")


class TokenGridTap:
    """Reshape a ViT layer's ``(B, N, C)`` token output into ``(B, C, h, w)`` through a tap.

    The tap is an ``nn.Identity`` owned by the adapter, not a submodule of the host: a forward
    hook on the token layer routes the patch tokens through it and back, so layer attributions
    such as Captum's ``LayerGradCam`` (which read dim 1 as channels) see a proper grid, and the
    host's module tree is never changed.
    """

    def __init__(self, adapter: Adapter, token_layer: nn.Module, batch_first: bool = True,
                 grid_size: tuple[int, int] | None = None) -> None:
        self.adapter = adapter
        self.token_layer = token_layer
        self.batch_first = batch_first
        self.fixed_grid = grid_size
        self.tap = nn.Identity()

    def _hook(self, module: nn.Module, args: Any, output: Tensor) -> Tensor:
        tokens = output if self.batch_first else output.transpose(0, 1)
        if tokens.dim() != 3:
            raise AdapterError(f"token layer {type(module).__name__} returned shape "
                               f"{tuple(output.shape)}, expected (B, N, C)")
        prefix = self.adapter.num_prefix_tokens
        patches = tokens[:, prefix:]
        b, n, c = patches.shape
        if self.fixed_grid is not None:
            h, w = self.fixed_grid
        elif self.adapter._image_size is not None:
            h, w = grid_from_tokens(n, self.adapter._image_size)
        else:
            raise AdapterError("the token grid is unknown: embed images through the adapter")
        grid = self.tap(patches.transpose(1, 2).reshape(b, c, h, w))
        tokens = torch.cat([tokens[:, :prefix], grid.flatten(2).transpose(1, 2)], dim=1)
        return tokens if self.batch_first else tokens.transpose(0, 1)

    @contextlib.contextmanager
    def active(self) -> Iterator[nn.Module]:
        handle = self.token_layer.register_forward_hook(self._hook)
        try:
            yield self.tap
        finally:
            handle.remove()
