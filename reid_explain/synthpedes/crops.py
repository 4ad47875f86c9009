"""Detector-like misaligned crops of SynthPedes images (``SynthConfig(crops="misaligned")``).

Why: rendered crops put every person in the same place, so a map drawn without looking at the
image (the mean person mask) already scores high on grounding. A detector's boxes are looser or
tighter, shifted, cut the head or the feet, and catch part of a passer-by: there only a map that
looks at the image finds the person.

How, exactly: the scene is rendered on a canvas :data:`CANVAS` times the crop's size, with the
person at the same pixel size and offset as in the aligned crop (so the canvas centre holds the
aligned crop). A box is drawn around it and resampled to the crop's size by one nearest-neighbour
index map (:func:`box_index_map`), applied to the image and to the label map alike
(:func:`apply_index_map`): every output pixel's colour and part label come from the same source
pixel, so the masks move exactly with the pixels. A passer-by is drawn into the canvas before
the crop with label 0 (background: it is not the identity).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from reid_explain.synthpedes.identities import Identity
from reid_explain.synthpedes.rendering import (
    PARTS,
    Camera,
    Rendered,
    View,
    _background,
    _Canvas,
    _draw_person,
    finish,
)

#: the canvas is this many times the crop's height and width
CANVAS = 3


@dataclass(frozen=True)
class Box:
    """A detection box on the canvas: top-left corner and size, in canvas pixels."""

    y0: float
    x0: float
    height: float
    width: float


@dataclass(frozen=True)
class CropDraw:
    """The random parts of one misaligned crop."""

    box: Box
    cut: str  # "", "head" or "feet": which end of the person a tight box cuts
    passerby: int  # -1 none; else the index of the passer-by identity
    passerby_side: int  # -1 left edge, +1 right edge
    passerby_view: View | None


def box_index_map(box: Box, out_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``(rows, cols)``: the canvas row of each output row and column of each output column
    (nearest neighbour at pixel centres)."""
    h, w = out_size
    rows = np.floor(box.y0 + (np.arange(h) + 0.5) * box.height / h).astype(np.int64)
    cols = np.floor(box.x0 + (np.arange(w) + 0.5) * box.width / w).astype(np.int64)
    return rows, cols


def apply_index_map(array: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``array[rows][:, cols]`` for (H, W) or (H, W, C) arrays: the crop of an index map."""
    return array[rows[:, None], cols[None, :]]


def draw_crop(rng: np.random.Generator, size: tuple[int, int], scale: tuple[float, float],
              shift: tuple[float, float], cut_prob: float, passerby_prob: float,
              n_passersby: int, camera: Camera, sample_view) -> CropDraw:
    """The box (loose, shifted; tight and cutting the head or feet with ``cut_prob``) and the
    passer-by of one image, from its own generator."""
    h, w = size
    cut = ""
    if rng.random() < cut_prob:
        person_scale = float(rng.uniform(1.05, 1.25))  # tight: the person overflows the box
        cut = "head" if rng.random() < 0.5 else "feet"
        dy = (1 if cut == "head" else -1) * float(rng.uniform(0.06, 0.14))
        dx = float(rng.uniform(-shift[0], shift[0])) / 2
    else:
        person_scale = float(rng.uniform(*scale))
        dy = float(rng.uniform(-shift[1], shift[1]))
        dx = float(rng.uniform(-shift[0], shift[0]))
    bh, bw = h / person_scale, w / person_scale
    cy, cx = CANVAS * h / 2 + dy * bh, CANVAS * w / 2 + dx * bw
    box = Box(cy - bh / 2, cx - bw / 2, bh, bw)
    passerby, side, view = -1, 0, None
    if n_passersby and rng.random() < passerby_prob:
        passerby = int(rng.integers(n_passersby))
        side = 1 if rng.random() < 0.5 else -1
        view = sample_view(rng, camera, 0.0)
        # centred just outside the box's edge, so a part of them shows in the crop
        edge_x = box.x0 + (box.width if side > 0 else 0.0)
        offset = side * float(rng.uniform(0.05, 0.3)) * bw
        view = replace(view, scale=round(view.scale / CANVAS, 4),
                       dx=round((edge_x + offset - CANVAS * w / 2) / (CANVAS * w), 4),
                       dy=round((cy - CANVAS * h / 2) / (CANVAS * h), 4), occluder=None,
                       clutter=())
    return CropDraw(box, cut, passerby, side, view)


def canvas_view(view: View) -> View:
    """The aligned view on the larger canvas: the person keeps its pixel size and offset."""
    return replace(view, scale=view.scale / CANVAS, dx=view.dx / CANVAS, dy=view.dy / CANVAS)


def render_misaligned(identity: Identity, camera: Camera, view: View, draw: CropDraw,
                      passerby: Identity | None, height: int, width: int) -> Rendered:
    """The scene on the canvas, the passer-by in front with label 0, then the box's crop."""
    big_h, big_w = CANVAS * height, CANVAS * width
    cv = _Canvas(big_h, big_w)
    _background(cv, camera, view)
    _draw_person(cv, identity, canvas_view(view))
    if passerby is not None and draw.passerby_view is not None:
        labels = cv.lab.copy()
        cv.lab[:] = 0
        _draw_person(cv, passerby, draw.passerby_view)
        labels[cv.lab > 0] = 0  # the passer-by covers the person, and is background
        cv.lab[:] = labels
    top = (CANVAS - 1) / 2
    canvas = finish(cv, camera, view, (top * height, top * width, height, width))
    rows, cols = box_index_map(draw.box, (height, width))
    rows, cols = rows.clip(0, big_h - 1), cols.clip(0, big_w - 1)
    labels = apply_index_map(canvas.labels, rows, cols)
    counts = np.bincount(labels.ravel(), minlength=len(PARTS) + 1)
    return Rendered(apply_index_map(canvas.image, rows, cols), labels, view,
                    {p: int(counts[k + 1]) for k, p in enumerate(PARTS)})
