"""Coordinates of a patch grid, for spatial penalties and position features."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def grid_coordinates(h: int, w: int, device: torch.device | None = None) -> Tensor:
    """``(h*w, 2)`` cell centres (y, x) in [0, 1] x [0, 1], row-major like the patch tokens."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).reshape(-1, 2)


def fourier_positions(h: int, w: int, frequencies: int, device: torch.device | None = None
                      ) -> Tensor:
    """``(h*w, 4*frequencies)`` sin/cos features of the cell centres at octave frequencies."""
    bands = math.pi * 2.0 ** torch.arange(frequencies, device=device, dtype=torch.float32)
    angles = (grid_coordinates(h, w, device)[:, :, None] * bands).flatten(1)  # (N, 2F)
    return torch.cat([angles.sin(), angles.cos()], dim=1)
