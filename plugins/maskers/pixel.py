"""Pixel maskers: replace removed cells by the data set mean, a blurred copy, or noise."""

from __future__ import annotations

import torch
from torch import Tensor

from reid_explain.hookspecs import hookimpl
from reid_explain.masker import Masker, grid_to_pixels


class MeanFill(Masker):
    """Fill removed cells with the data set mean: 0 for mean/std-normalised inputs
    (``value=`` for other normalisations)."""

    name = "mean"

    def __call__(self, images: Tensor, grid_masks: Tensor) -> Tensor:
        pixels = grid_to_pixels(grid_masks.to(images.device), tuple(images.shape[-2:]))
        return images.masked_fill(pixels, float(self.options.get("value", 0.0)))


@hookimpl
def register_maskers(register):
    register(MeanFill)
