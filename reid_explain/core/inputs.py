"""Input checks shared by the Explainer and the parts it fronts (grounding, evaluation).

They live here, below the façade, so that a part can check images and captions without
importing :mod:`reid_explain.explain.explainer` (which would make an import circle). Every
refusal is an :class:`~reid_explain.errors.InputError` that names the input and the reason.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import InputError
from ..plugin_api.adapter import Adapter


def check_images(images: Tensor, what: str, adapter: Adapter | None = None) -> Tensor:
    """Images checked, and with ``adapter`` normalised to what the host takes, before the host
    sees them: a batch dimension, the host's channel count (grey images are repeated to RGB),
    its parameters' dtype and device, and a size its spatial layer can map (at least one grid
    cell per axis). Every refusal names ``what`` and the reason."""
    if not isinstance(images, Tensor):
        raise InputError(f"{what} must be a torch.Tensor of images, got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4:
        raise InputError(f"{what} must be (B, C, H, W) images, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InputError(f"{what} must be a float tensor (normalised images), got {images.dtype}")
    if images.shape[0] == 0:
        raise InputError(f"{what} is empty")
    if not torch.isfinite(images).all():
        raise InputError(f"{what} contains NaN or inf values")
    if adapter is None:
        if images.shape[1] not in (1, 3):
            raise InputError(f"{what} must be (B, 3, H, W) images, got shape "
                             f"{tuple(images.shape)}")
        return images
    channels = input_channels(adapter.model)
    if images.shape[1] != channels:
        if images.shape[1] == 1 and channels == 3:
            images = images.repeat(1, 3, 1, 1)
        else:
            raise InputError(f"{what} has {images.shape[1]} channels; the host's first layer "
                             f"takes {channels}")
    param = next(adapter.model.parameters(), None)
    if param is not None and param.device.type == "meta":
        raise InputError(f"the model's parameters are on the 'meta' device (not materialised); "
                         f"load its weights before explaining {what}")
    if param is not None and param.is_floating_point():
        images = images.to(device=param.device, dtype=param.dtype)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    expected = adapter.input_size()
    if expected is not None and size != tuple(expected):
        raise InputError(f"{what}: images of {size[0]}x{size[1]}; the host takes "
                         f"{expected[0]}x{expected[1]} (its position embeddings are fixed to "
                         "that size): resize them")
    try:
        grid = adapter.grid_size(size)
    except Exception as exc:
        raise InputError(f"{what}: images of {size[0]}x{size[1]} are too small or of a shape "
                         f"the host cannot take ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if min(grid) < 1:
        raise InputError(f"{what}: images of {size[0]}x{size[1]} give a {grid[0]}x{grid[1]} "
                         f"grid on the host's spatial layer; they must be at least "
                         f"{adapter.patch_size(size)[0]}x{adapter.patch_size(size)[1]} pixels")
    return images


def input_channels(model: nn.Module) -> int:
    """Channels the host's first convolution (or patch embedding) takes; 3 if none is found."""
    for module in model.modules():
        channels = getattr(module, "in_channels", None)
        if isinstance(module, nn.modules.conv._ConvNd) and isinstance(channels, int):
            return channels
    return 3


def check_same_size(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    """Both sides of a pair go through the host as one batch, so they must share a size."""
    if a.shape[-2:] != b.shape[-2:]:
        raise InputError(f"{names[0]} images are {tuple(a.shape[-2:])} and {names[1]} images "
                         f"{tuple(b.shape[-2:])}; resize both sides to one size")


def check_embeddings(embeddings: Tensor, what: str) -> None:
    """Refuse inputs whose embedding is all zeros: every map of them would be zero too."""
    dead = (embeddings.abs().amax(dim=1) == 0).nonzero().flatten().tolist()
    if dead:
        raise InputError(f"{what} item(s) {dead[:5]} embed to an all-zero vector (blank or "
                         "degenerate input?); their similarity, and so their maps, carry "
                         "nothing to explain")


def pair_centre(centre: Tensor | str | None, gallery_emb: Tensor) -> Tensor | None:
    """The centre a pair score is taken about (see ``CentredCosine``): None (plain cosine),
    ``"gallery"`` (the mean of the normalised gallery embeddings ``gallery_emb``) or a
    ``(D,)`` embedding."""
    if centre is None:
        return None
    if isinstance(centre, str):
        if centre != "gallery":
            raise InputError(f"centre must be 'gallery', a (D,) embedding or None, got "
                             f"{centre!r}")
        if len(gallery_emb) < 2:
            raise InputError(f"centre='gallery' needs two gallery images or more, got "
                             f"{len(gallery_emb)}: about one image's own embedding every "
                             "pair score is 0; pass centre=None (plain cosine) or a (D,) "
                             "centre from a larger gallery")
        return torch.nn.functional.normalize(gallery_emb.float(), dim=-1).mean(dim=0)
    centre = torch.as_tensor(centre)
    if centre.shape != (gallery_emb.shape[1],) or not torch.isfinite(centre).all():
        raise InputError(f"centre must be a finite ({gallery_emb.shape[1]},) embedding, got "
                         f"shape {tuple(centre.shape)}")
    return centre.to(gallery_emb.device, torch.float32)


def check_texts(texts: Sequence[str] | str) -> list[str]:
    """A list of non-empty captions (one string is a list of one)."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise InputError("texts must be a non-empty list of non-empty strings")
    return texts


def select_pairs(scores: Tensor, pairs: Tensor | Sequence[tuple[int, int]] | None,
                 top_k: int | None) -> Tensor:
    """(P, 2) pairs: explicit, top-k of each row of ``scores``, or all."""
    n_rows, n_cols = scores.shape
    if pairs is not None:
        raw = torch.as_tensor(pairs)
        if raw.is_floating_point() and not torch.equal(raw, raw.round()):
            raise InputError("pairs must hold integer indices, got fractional values")
        if raw.dtype == torch.bool or raw.is_complex():
            raise InputError(f"pairs must hold integer indices, got {raw.dtype}")
        if raw.numel() % 2:
            raise InputError(f"pairs must be (query, gallery) index pairs; got {raw.numel()} "
                             "numbers, an odd count")
        pairs = raw.to(torch.long).reshape(-1, 2)
        if pairs.numel() == 0:
            raise InputError("pairs is empty")
        if (pairs[:, 0] >= n_rows).any() or (pairs[:, 1] >= n_cols).any() or (pairs < 0).any():
            raise InputError(f"pairs index outside ({n_rows} queries, {n_cols} gallery items)")
        return pairs
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise InputError(f"top_k must be an integer, got {top_k!r}")
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, n_cols)
        cols = scores.topk(k, dim=1).indices
        rows = torch.arange(n_rows)[:, None].expand_as(cols)
        return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)
    rows, cols = torch.meshgrid(torch.arange(n_rows), torch.arange(n_cols), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def normalised_images(images: Sequence | np.ndarray, mean: Sequence[float],
                      std: Sequence[float]) -> Tensor:
    """``(N, H, W, 3)`` uint8 images (an array, or a sequence of them) as the ``(N, 3, H, W)``
    float tensor a host takes: scaled to [0, 1], then ``(x - mean) / std`` per channel."""
    x = torch.from_numpy(np.ascontiguousarray(np.stack(images) if not isinstance(
        images, np.ndarray) else images)).permute(0, 3, 1, 2).float().div_(255.0)
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
