"""Pixel maskers: replace removed cells by the data set mean, a blurred copy, or noise.

Each one changes only the pixels of the removed grid cells (cells upsampled nearest to the
image), so a curve over growing masks measures the cells and nothing else.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.masker import Masker, grid_to_pixels


class MeanFill(Masker):
    """Fill removed cells with the data set mean: 0 for mean/std-normalised inputs
    (``value=`` for other normalisations)."""

    name = "mean"
    deterministic = True

    def __call__(self, images: Tensor, grid_masks: Tensor) -> Tensor:
        pixels = grid_to_pixels(grid_masks.to(images.device), tuple(images.shape[-2:]))
        return images.masked_fill(pixels, float(self.options.get("value", 0.0)))


def blur_kernel_size(sigma: float, image_size: tuple[int, int]) -> int:
    """Odd kernel covering +-3 sigma, capped so that reflect padding fits the image."""
    size = 2 * math.ceil(3 * sigma) + 1
    cap = 2 * min(image_size) - 1  # reflect padding needs pad < side
    return max(1, min(size, cap if cap % 2 else cap - 1))


class GaussianBlur(Masker):
    """Replace removed cells by a Gaussian-blurred copy of the image (``sigma=`` pixels,
    default 5, as RISE; ``kernel_size=`` odd, default covers +-3 sigma).

    Blurring removes the detail of a region but keeps its colour and low frequencies, so it is
    a gentler, less out-of-distribution removal than a flat fill."""

    name = "blur"
    deterministic = True

    def blurred(self, images: Tensor) -> Tensor:
        sigma = float(self.options.get("sigma", 5.0))
        if sigma <= 0:
            raise ValueError(f"blur sigma must be > 0, got {sigma}")
        size = self.options.get("kernel_size")
        size = int(size) if size is not None else blur_kernel_size(sigma, images.shape[-2:])
        from torchvision.transforms.functional import gaussian_blur  # lazy: torchvision is slow

        return gaussian_blur(images, kernel_size=[size, size], sigma=[sigma, sigma])

    def __call__(self, images: Tensor, grid_masks: Tensor) -> Tensor:
        pixels = grid_to_pixels(grid_masks.to(images.device), tuple(images.shape[-2:]))
        if not pixels.any():
            return images.clone()
        return torch.where(pixels, self.blurred(images), images)


class GaussianNoise(Masker):
    """Replace removed cells by Gaussian noise around the data set mean (``std=``, default 1:
    the data set's own spread for mean/std-normalised inputs; ``mean=`` default 0).

    ``additive=True`` adds the noise to the pixels instead of replacing them. The noise comes
    from ``generator=`` (a ``torch.Generator``) or one seeded with ``seed=`` (default 0) when
    the masker is made, so a masker built with the same options gives the same sequence of
    outputs."""

    name = "noise"

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        generator = options.get("generator")
        if generator is None:
            generator = torch.Generator().manual_seed(int(options.get("seed", 0)))
        self.generator: torch.Generator = generator

    def __call__(self, images: Tensor, grid_masks: Tensor) -> Tensor:
        pixels = grid_to_pixels(grid_masks.to(images.device), tuple(images.shape[-2:]))
        std = float(self.options.get("std", 1.0))
        noise = torch.randn(images.shape, generator=self.generator,
                            device=self.generator.device, dtype=images.dtype).to(images.device)
        noise = noise * std
        if self.options.get("additive", False):
            fill = images + noise
        else:
            fill = noise + float(self.options.get("mean", 0.0))
        return torch.where(pixels, fill, images)


@hookimpl
def register_maskers(register):
    register(MeanFill)
    register(GaussianBlur)
    register(GaussianNoise)
