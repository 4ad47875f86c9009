"""SynthPedes misaligned crops: masks move exactly with the pixels, the aligned set is unchanged,
and the crops really vary where the person stands."""

from __future__ import annotations

import numpy as np
import pytest

from reid_explain.errors import InputError
from reid_explain.synthpedes.crops import (
    CANVAS,
    Box,
    apply_index_map,
    box_index_map,
    canvas_view,
    render_misaligned,
)
from reid_explain.synthpedes.planning import SynthConfig, iter_samples, plan, render_sample
from reid_explain.synthpedes.rendering import _background, _Canvas, _draw_person, finish


def _people(config: SynthConfig) -> list:
    return [s for s in iter_samples(plan(config)) if s.spec.pid != 0]


def test_aligned_is_the_default_and_unchanged_by_the_option():
    base = _people(SynthConfig(n_ids=4, images_per_id=4, seed=3))
    explicit = _people(SynthConfig(n_ids=4, images_per_id=4, seed=3, crops="aligned",
                                   crop_cut_prob=0.9, crop_passerby_prob=0.9))
    for a, b in zip(base, explicit, strict=True):
        assert np.array_equal(a.rendered.image, b.rendered.image)
        assert np.array_equal(a.rendered.labels, b.rendered.labels)
        assert [c.text for c in a.captions] == [c.text for c in b.captions]


def test_misaligned_masks_move_exactly_with_the_pixels():
    """The crop is one index map applied to the canvas image and its label map: every output
    pixel's colour and label come from the same canvas pixel."""
    config = SynthConfig(n_ids=4, images_per_id=4, seed=3, crops="misaligned")
    synth = plan(config)
    spec = next(s for s in synth.samples if s.pid != 0)
    identity, camera = synth.identity_of(spec), synth.cameras[spec.cam - 1]
    view = render_sample(synth, spec).rendered.view
    h, w = config.height, config.width
    cv = _Canvas(CANVAS * h, CANVAS * w)
    _background(cv, camera, view)
    _draw_person(cv, identity, canvas_view(view))
    canvas = finish(cv, camera, view, ((CANVAS - 1) / 2 * h, (CANVAS - 1) / 2 * w, h, w))
    box = Box(100.3, 40.7, 150.0, 75.0)
    rows, cols = box_index_map(box, (h, w))
    assert rows.min() >= 100 and rows.max() < 251 and cols.min() >= 40 and cols.max() < 116
    image, labels = apply_index_map(canvas.image, rows, cols), apply_index_map(canvas.labels,
                                                                               rows, cols)
    for i, j in [(0, 0), (17, 33), (h - 1, w - 1), (64, 31)]:
        assert np.array_equal(image[i, j], canvas.image[rows[i], cols[j]])
        assert labels[i, j] == canvas.labels[rows[i], cols[j]]
    # the crop of the whole pipeline equals the index map of the canvas (no passer-by drawn)
    from reid_explain.synthpedes.crops import CropDraw

    got = render_misaligned(identity, camera, view, CropDraw(box, "", -1, 0, None), None, h, w)
    assert np.array_equal(got.image, image) and np.array_equal(got.labels, labels)
    # the aligned crop is the canvas's central window: the same labels as the aligned render
    centre = Box((CANVAS - 1) / 2 * h, (CANVAS - 1) / 2 * w, h, w)
    aligned = apply_index_map(canvas.labels, *box_index_map(centre, (h, w)))
    from reid_explain.synthpedes.rendering import render

    assert (aligned == render(identity, camera, view, h, w).labels).mean() > 0.99


def test_misaligned_crops_vary_cut_and_catch_passers_by():
    aligned = _people(SynthConfig(n_ids=16, images_per_id=4, seed=5))
    misaligned = _people(SynthConfig(n_ids=16, images_per_id=4, seed=5, crops="misaligned"))

    def centroids(samples):
        out = []
        for s in samples:
            ys, xs = np.nonzero(s.rendered.labels)
            out.append((ys.mean() / s.rendered.labels.shape[0],
                        xs.mean() / s.rendered.labels.shape[1]))
        return np.array(out)

    spread_a, spread_m = centroids(aligned).std(axis=0), centroids(misaligned).std(axis=0)
    assert (spread_m > 1.5 * spread_a).all(), (spread_a, spread_m)
    def cut_at_border(samples):  # the person's labels reach the top or bottom row
        return sum(int((s.rendered.labels[[0, -1]] > 0).any()) for s in samples)

    assert cut_at_border(misaligned) >= 3 * max(cut_at_border(aligned), 1)
    # captions describe only what the crop shows: part_pixels come from the cropped labels
    for m in misaligned:
        counts = np.bincount(m.rendered.labels.ravel(), minlength=10)
        assert list(m.rendered.part_pixels.values()) == counts[1:].tolist()


def test_passer_by_is_background():
    config = SynthConfig(n_ids=12, images_per_id=4, seed=2, crops="misaligned",
                         crop_passerby_prob=1.0, crop_cut_prob=0.0)
    aligned_like = SynthConfig(n_ids=12, images_per_id=4, seed=2, crops="misaligned",
                               crop_passerby_prob=0.0, crop_cut_prob=0.0)
    changed = 0
    for a, b in zip(_people(config), _people(aligned_like), strict=True):
        differ = (a.rendered.image != b.rendered.image).any(axis=-1)
        # where the passer-by shows, the label is background, and the person's labels only
        # lose pixels (covered), never gain any
        assert (a.rendered.labels[differ] == 0).all()
        assert ((a.rendered.labels > 0) <= (b.rendered.labels > 0)).all()
        changed += int(differ.any())
    assert changed >= 20


@pytest.mark.parametrize("field, value, message", [
    ("crops", "sideways", "crops must be"), ("crop_scale", (0.9, 0.5), "crop_scale"),
    ("crop_shift", (0.5, 0.1), "crop_shift"), ("crop_cut_prob", 1.5, "crop_cut_prob"),
    ("crop_passerby_prob", -0.1, "crop_passerby_prob"), ("crop_scale", 0.7, "crop_scale")])
def test_bad_crop_options_name_the_field(field, value, message):
    with pytest.raises(InputError, match=message):
        SynthConfig(**{field: value})
