"""Results of explanation: grounding maps over images and relevance over text tokens."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._util.io import atomic_path


def sharpen_maps(maps: Tensor, power: float) -> Tensor:
    """Each map's positive part to ``power``, scaled so its maximum stays the same.

    Raising to a power concentrates a map's mass where it is highest (as the image-blind
    reference's location prior is sharpened). Each row is divided by its own maximum first and
    the power taken in float64: attributions are often ~1e-3, and ``1e-3 ** 16`` underflows in
    float32, which would turn a map into ties and zeros. Rows without positive mass stay zero.
    """
    positive = maps.clamp_min(0).double()
    peak = positive.flatten(1).amax(dim=1).clamp_min(torch.finfo(torch.float64).tiny)
    peak = peak.view(-1, *([1] * (maps.dim() - 1)))
    return (peak * (positive / peak).pow(float(power))).to(maps.dtype)


def _min_max(x: Tensor) -> Tensor:
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *[1] * (x.dim() - 1))
    hi = flat.max(dim=1).values.view(-1, *[1] * (x.dim() - 1))
    return (x - lo) / (hi - lo).clamp_min(1e-12)


def pool_to_grid(maps: Tensor, grid: Sequence[int]) -> Tensor:
    """``(..., h, w)`` maps on ``grid``, area-averaged if finer (unchanged if already on it)."""
    if tuple(maps.shape[-2:]) == tuple(grid):
        return maps
    lead = maps.shape[:-2]
    pooled = F.adaptive_avg_pool2d(maps.reshape(-1, 1, *maps.shape[-2:]), tuple(grid))
    return pooled.reshape(*lead, *pooled.shape[-2:])


@dataclass
class GroundingMap:
    """Maps over images, one per explained item, with the score each map explains.

    ``maps`` are ``(N, h, w)`` at the resolution the method produced (the patch grid for
    Grad-CAM, occlusion and attention methods; pixels for Integrated Gradients). ``on_grid()``
    gives them on the host's patch grid, ``upsampled()`` at image size (bilinear).

    ``images`` holds each explained image once: with ``image_index`` (one query explained
    against k gallery images is one stored image, not k copies) row ``i``'s image is
    ``images[image_index[i]]``; without it, one image per row. ``row_images()`` gives the
    ``(N, 3, H, W)`` images of the rows in either case.
    """

    maps: Tensor
    scores: Tensor
    method: str
    image_size: tuple[int, int]
    grid_size: tuple[int, int]
    images: Tensor | None = None
    #: the fixed embedding each map's score is measured against (for perturbation metrics)
    references: Tensor | None = None
    labels: list[str] = field(default_factory=list)
    pixel_mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    #: ``(N,)`` row -> index into ``images`` (each image stored once), or None: a row each
    image_index: Tensor | None = None

    def __post_init__(self) -> None:
        if self.maps.dim() != 3:
            raise ValueError(f"maps must be (N, h, w), got {tuple(self.maps.shape)}")
        if not self.labels:
            self.labels = [str(i) for i in range(len(self.maps))]
        if self.image_index is not None:
            if self.images is None:
                raise ValueError("image_index given without images")
            self.image_index = torch.as_tensor(self.image_index, dtype=torch.long).cpu()
            if self.image_index.shape != (len(self.maps),):
                raise ValueError(f"image_index must be ({len(self.maps)},), one per map, got "
                                 f"{tuple(self.image_index.shape)}")
            if len(self.image_index) and not (
                    0 <= int(self.image_index.min()) and
                    int(self.image_index.max()) < len(self.images)):
                raise ValueError(f"image_index points outside the {len(self.images)} images")

    def row_images(self) -> Tensor | None:
        """``(N, 3, H, W)``: the image of each row (a copy where images are shared)."""
        if self.images is None or self.image_index is None:
            return self.images
        return self.images[self.image_index.to(self.images.device)]

    def _row_image(self, i: int) -> Tensor:
        assert self.images is not None
        return self.images[i if self.image_index is None else int(self.image_index[i])]

    def __len__(self) -> int:
        return int(self.maps.shape[0])

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> GroundingMap:
        if isinstance(index, int):
            index = [index]
        idx = torch.as_tensor(range(len(self))[index] if isinstance(index, slice) else index,
                              dtype=torch.long)
        shared = self.image_index is not None  # keep the store, select its index
        return replace(self, maps=self.maps[idx], scores=self.scores[idx],
                       images=self.images if self.images is None or shared
                       else self.images[idx],
                       image_index=self.image_index[idx] if shared else None,
                       references=None if self.references is None else self.references[idx],
                       labels=[self.labels[int(i)] for i in idx])

    def on_grid(self) -> Tensor:
        """``(N, h, w)`` on the host's patch grid (area-averaged if finer)."""
        return pool_to_grid(self.maps, self.grid_size)

    def upsampled(self, size: tuple[int, int] | None = None, mode: str = "bilinear") -> Tensor:
        """``(N, H, W)`` at image size (or ``size``)."""
        size = tuple(size or self.image_size)
        if tuple(self.maps.shape[-2:]) == size:
            return self.maps
        kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
        return F.interpolate(self.maps[:, None].float(), size=size, mode=mode, **kwargs)[:, 0]

    def normalized(self) -> GroundingMap:
        """Each map rescaled to [0, 1] (for display and threshold-based metrics)."""
        return replace(self, maps=_min_max(self.maps))

    def numpy(self, upsampled: bool = True) -> np.ndarray:
        return (self.upsampled() if upsampled else self.maps).detach().cpu().numpy()

    # -- rendering ----------------------------------------------------------------------------
    def _display_image(self, i: int) -> np.ndarray:
        if self.images is None:
            raise ValueError("this GroundingMap holds no images; pass image= to overlay()")
        image = self._row_image(i).detach().cpu().float()
        mean = torch.tensor(self.pixel_mean).view(3, 1, 1)
        std = torch.tensor(self.pixel_std).view(3, 1, 1)
        return (image * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()

    def overlay(self, i: int = 0, alpha: float = 0.5, cmap: str = "jet",
                image: np.ndarray | None = None):
        """A PIL image: the ``i``-th map (normalised) blended over its image."""
        from matplotlib import colormaps
        from PIL import Image

        base = self._display_image(i) if image is None else np.asarray(image, dtype=np.float32)
        if base.max() > 1.0:
            base = base / 255.0
        heat = _min_max(self.upsampled(size=base.shape[:2])[i: i + 1])[0].cpu().numpy()
        colored = colormaps[cmap](heat)[..., :3]
        blend = (1 - alpha) * base + alpha * colored
        return Image.fromarray((blend * 255).round().astype(np.uint8))

    def save_png(self, path: str | os.PathLike, indices: Sequence[int] | None = None,
                 alpha: float = 0.5, scale: int = 2) -> Path:
        """Save overlays of the chosen maps side by side in one PNG (atomically)."""
        from PIL import Image, ImageDraw

        indices = list(range(len(self))) if indices is None else list(indices)
        tiles = [self.overlay(i, alpha=alpha) for i in indices]
        w, h = tiles[0].size
        canvas = Image.new("RGB", (w * scale * len(tiles), h * scale + 14), "white")
        draw = ImageDraw.Draw(canvas)
        for k, (i, tile) in enumerate(zip(indices, tiles, strict=True)):
            canvas.paste(tile.resize((w * scale, h * scale), Image.NEAREST), (k * w * scale, 14))
            draw.text((k * w * scale + 2, 1), f"{self.labels[i]} {float(self.scores[i]):.3f}",
                      fill="black")
        with atomic_path(path) as tmp:
            canvas.save(tmp, format="PNG")
        return Path(path)


@dataclass
class TokenRelevance:
    """Relevance of each text token for the score of a (text, image) pair."""

    relevance: Tensor  # (N, L), zero on special tokens
    tokens: list[list[str]]
    scores: Tensor
    method: str
    special: Tensor  # (N, L) bool: start/end/padding

    def __len__(self) -> int:
        return int(self.relevance.shape[0])

    def words(self, i: int = 0) -> list[tuple[str, float]]:
        """``(token, relevance)`` for the word tokens of item ``i``, in caption order."""
        keep = ~self.special[i]
        return [(tok, float(r)) for tok, r, k in
                zip(self.tokens[i], self.relevance[i], keep, strict=True) if k]

    def numpy(self) -> np.ndarray:
        return self.relevance.detach().cpu().numpy()


@dataclass
class PairExplanation:
    """Why query ``pairs[:, 0]`` matches gallery ``pairs[:, 1]``: maps on both images."""

    pairs: Tensor  # (P, 2) long: (query index, gallery index)
    scores: Tensor  # (P,) cosine similarity of each pair
    method: str
    query: GroundingMap | None
    gallery: GroundingMap | None

    def __len__(self) -> int:
        return int(self.pairs.shape[0])

    def save_png(self, directory: str | os.PathLike) -> list[Path]:
        """One PNG per pair: query overlay beside gallery overlay."""
        from PIL import Image

        directory = Path(directory)
        paths = []
        for p in range(len(self)):
            q, g = (int(v) for v in self.pairs[p])
            sides = [m.overlay(p) for m in (self.query, self.gallery) if m is not None]
            w, h = sides[0].size
            canvas = Image.new("RGB", (w * len(sides), h), "white")
            for k, tile in enumerate(sides):
                canvas.paste(tile, (k * w, 0))
            path = directory / f"{self.method}_q{q}_g{g}.png"
            with atomic_path(path) as tmp:
                canvas.resize((w * len(sides) * 2, h * 2), Image.NEAREST).save(tmp, format="PNG")
            paths.append(path)
        return paths


@dataclass
class TextImageExplanation:
    """Why caption ``pairs[:, 0]`` matches image ``pairs[:, 1]``: patches and words."""

    pairs: Tensor
    scores: Tensor
    method: str
    image: GroundingMap | None
    text: TokenRelevance | None
    texts: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.pairs.shape[0])
