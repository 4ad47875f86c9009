"""SynthPedes conditions that separate a map that looks at the image from one that guesses where
a person usually stands: misaligned crops (the person is not where it usually is) and
changed-part pairs (two images that differ only inside one part's mask)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace

import numpy as np
import pytest

from reid_explain.data.schema import PARTS
from reid_explain.errors import InputError
from reid_explain.synthpedes.crops import Box, apply_index_map, box_index_map
from reid_explain.synthpedes.pairs import (
    CHANGEABLE_PARTS,
    ChangedPartPairs,
    change_part,
    changeable_parts,
    changed_part_pair,
    changed_part_pairs,
    check_pair,
)
from reid_explain.synthpedes.planning import SynthConfig, plan, render_sample
from reid_explain.synthpedes.rendering import LABEL, masks_from_labels

# sha256 over (name, image, labels, part_pixels, captions, view) of every sample, computed with
# the code as it was before the crops option existed (git 434e47c)
BEFORE = {
    "small": ("706a0dc1967170ec7cefa04d1cf37d0ffe5f9b7d95cfa3f9527a23ba2d118e25",
              dict(n_ids=6, images_per_id=4, seed=5, height=64, width=32, occlusion_prob=0.3),
              None),
    "default_size": ("3c49709da684832e674fff308d42da52221b3e21db20098bbc01ceb2c3d73aa8",
                     dict(n_ids=4, images_per_id=4, seed=0), 6),
}


def _digest(config: SynthConfig, limit: int | None) -> str:
    sp = plan(config)
    specs = sp.samples if limit is None else sp.samples[:limit] + sp.samples[-2:]
    h = hashlib.sha256()
    for spec in specs:
        s = render_sample(sp, spec)
        h.update(spec.name.encode())
        h.update(s.rendered.image.tobytes())
        h.update(s.rendered.labels.tobytes())
        h.update(json.dumps(s.rendered.part_pixels, sort_keys=True).encode())
        h.update(json.dumps([c.to_json() for c in s.captions], sort_keys=True).encode())
        h.update(json.dumps(s.rendered.view.to_json(), sort_keys=True).encode())
    return h.hexdigest()


@pytest.mark.parametrize("case", sorted(BEFORE))
def test_aligned_renders_are_byte_identical_to_before(case):
    expected, fields, limit = BEFORE[case]
    assert _digest(SynthConfig(**fields), limit) == expected
    # the crop knobs do nothing while crops is "aligned"
    explicit = SynthConfig(**fields, crops="aligned", crop_cut_prob=1.0,
                           crop_passerby_prob=1.0, crop_scale=(0.4, 0.5))
    assert _digest(explicit, limit) == expected


def _people(config: SynthConfig, n: int = 50) -> list:
    sp = plan(config)
    return [render_sample(sp, s) for s in sp.samples if s.pid != 0][:n]


def _centroids_and_areas(samples: list) -> tuple[np.ndarray, np.ndarray]:
    cents, areas = [], []
    for s in samples:
        person = s.rendered.labels > 0
        cents.append(np.argwhere(person).mean(axis=0) / person.shape)
        areas.append(person.mean())
    return np.array(cents), np.array(areas)


BASE = SynthConfig(n_ids=13, images_per_id=4, seed=7, height=64, width=32)


@pytest.fixture(scope="module")
def aligned_and_misaligned():
    return (_people(BASE), _people(replace(BASE, crops="misaligned")),
            _people(replace(BASE, crops="misaligned", crop_passerby_prob=0.0)))


def test_aligned_person_stands_in_the_middle(aligned_and_misaligned):
    aligned, _, _ = aligned_and_misaligned
    cents, _ = _centroids_and_areas(aligned)
    assert len(aligned) == 50
    assert abs(cents[:, 1].mean() - 0.5) < 0.04 and abs(cents[:, 0].mean() - 0.5) < 0.06
    # head at the top, shoes at the bottom of every aligned crop where both show
    for s in aligned:
        masks = masks_from_labels(s.rendered.labels)
        head, shoes = masks[PARTS.index("head")], masks[PARTS.index("shoes")]
        if head.any() and shoes.any():
            assert np.argwhere(head)[:, 0].mean() < 0.3 * 64 < 0.8 * 64 < \
                np.argwhere(shoes)[:, 0].mean()


def test_misaligned_crops_move_resize_and_cut_the_person(aligned_and_misaligned):
    aligned, misaligned, no_passerby = aligned_and_misaligned
    ca, aa = _centroids_and_areas(aligned)
    cm, am = _centroids_and_areas(misaligned)
    spread_a, spread_m = ca.std(axis=0), cm.std(axis=0)  # seen: (.057,.056) vs (.091,.136)
    assert spread_m[0] > 1.4 * spread_a[0] and spread_m[1] > 2.0 * spread_a[1], (spread_a,
                                                                                  spread_m)
    assert am.std() > 1.3 * aa.std(), (aa.std(), am.std())  # seen: .066 vs .098
    # tight boxes cut the head or the feet off: the part shows aligned, not in the crop
    cut = sum(int(a.rendered.part_pixels[p] >= 8 and m.rendered.part_pixels[p] == 0)
              for a, m in zip(aligned, misaligned, strict=True) for p in ("head", "shoes"))
    assert cut >= 4  # seen: 7
    # passers-by: the same crop without them differs only where they are, and that is
    # background; the identity's labels only lose pixels under them
    with_passerby = 0
    for m, p in zip(misaligned, no_passerby, strict=True):
        differ = (m.rendered.image != p.rendered.image).any(axis=-1)
        assert (m.rendered.labels[differ] == 0).all()
        assert ((m.rendered.labels > 0) <= (p.rendered.labels > 0)).all()
        with_passerby += int(differ.sum() >= 20)
    assert with_passerby >= 5  # seen: 10 of 50 (30 % asked for; some stay outside the box)


def test_misaligned_part_pixels_and_captions_follow_the_crop(aligned_and_misaligned):
    aligned, misaligned, _ = aligned_and_misaligned
    dropped = 0
    for a, s in zip(aligned, misaligned, strict=True):
        counts = np.bincount(s.rendered.labels.ravel(), minlength=len(PARTS) + 1)
        assert [s.rendered.part_pixels[p] for p in PARTS] == counts[1:].tolist()
        mentioned = {ph.part for cap in s.captions for ph in cap.phrases}
        assert all(s.rendered.part_pixels[p] >= BASE.min_caption_pixels for p in mentioned)
        # parts the aligned image shows but the crop cut off are not described
        gone = {p for p in PARTS if a.rendered.part_pixels[p] >= BASE.min_caption_pixels
                > s.rendered.part_pixels[p]}
        assert not gone & mentioned
        dropped += len(gone)
    assert dropped >= 4  # seen: 17


def test_index_map_takes_image_and_label_from_the_same_source_pixel():
    sp = plan(BASE)
    src = render_sample(sp, sp.samples[0]).rendered
    h, w = src.labels.shape
    # an "image" that spells out each pixel's own coordinates
    coords = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), axis=-1)
    for box in (Box(-5.3, 4.6, 1.4 * h, 1.4 * w), Box(10.0, -3.0, h / 1.3, w / 1.3),
                Box(7.0, 5.0, h - 14.0, w - 10.0)):
        rows, cols = box_index_map(box, (h, w))
        inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
        rows, cols = rows.clip(0, h - 1), cols.clip(0, w - 1)
        image, labels = apply_index_map(src.image, rows, cols), apply_index_map(src.labels,
                                                                                rows, cols)
        where = apply_index_map(coords, rows, cols)
        assert image.shape == src.image.shape and labels.shape == src.labels.shape
        assert np.array_equal(image, src.image[where[..., 0], where[..., 1]])
        assert np.array_equal(labels, src.labels[where[..., 0], where[..., 1]])
        # nearest neighbour at pixel centres: a sub-box is the source, shifted and scaled
        ys = np.floor(box.y0 + (np.arange(h) + 0.5) * box.height / h).astype(int)
        assert np.array_equal(where[:, 0, 0], ys.clip(0, h - 1))
        assert inside.sum() > 0.4 * h * w
    # an integer shift at the same size moves labels and pixels exactly
    rows, cols = box_index_map(Box(3.0, 2.0, h, w), (h, w))
    assert np.array_equal(apply_index_map(src.labels, rows.clip(0, h - 1), cols.clip(0, w - 1))
                          [: h - 3, : w - 2], src.labels[3:, 2:])


# ---------------------------------------------------------------------------- changed parts

PAIRS = SynthConfig(n_ids=60, images_per_id=4, seed=2, height=64, width=32)


def _first_spec_showing(sp, part: str):
    for spec in sp.samples:
        if spec.pid == 0 or part not in changeable_parts(sp.identity_of(spec)):
            continue
        if render_sample(sp, spec, with_captions=False).rendered.part_pixels[part] >= 20:
            return spec
    raise AssertionError(f"no image shows {part}")


@pytest.mark.parametrize("crops", ["aligned", "misaligned"])
def test_a_changed_part_pair_differs_only_inside_that_part(crops):
    sp = plan(replace(PAIRS, crops=crops))
    rng = np.random.default_rng(0)
    cases = [(p, None) for p in CHANGEABLE_PARTS] + [("upper_body", "pattern")]
    seen = {}
    for part, kind in cases:
        spec = _first_spec_showing(sp, part)
        first, second = changed_part_pair(sp, spec, part, rng, kind=kind)
        dataset = render_sample(sp, spec).rendered
        assert np.array_equal(first.image, dataset.image)  # the data set's own image
        assert np.array_equal(first.labels, second.labels)  # shapes never change
        mask = first.labels == LABEL[part]
        differ = (first.image != second.image).any(axis=-1)
        assert not (differ & ~mask).any(), part
        # skin under short sleeves/shorts is upper/lower body too, and keeps its colour;
        # pattern changes leave the cells where neither pattern darkens
        assert differ.sum() >= (0.2 if part in ("upper_body", "lower_body") else 0.6) * \
            mask.sum(), (part, kind, int(differ.sum()), int(mask.sum()))
        seen[(part, kind)] = (int(differ.sum()), int(mask.sum()))
    assert len(seen) == len(cases)


def test_changed_part_pairs_dataset_both_crop_options():
    for crops in ("aligned", "misaligned"):
        config = replace(PAIRS, crops=crops)
        pairs = changed_part_pairs(config, 30, split="test", seed=1)
        assert isinstance(pairs, ChangedPartPairs) and len(pairs) == 30
        n, h, w = 30, config.height, config.width
        assert pairs.first.shape == pairs.second.shape == (n, h, w, 3)
        assert pairs.first.dtype == np.uint8 and pairs.masks.dtype == bool
        assert pairs.masks.shape == (n, len(PARTS), h, w) and pairs.part_names == PARTS
        changed = pairs.changed_masks()
        differ = (pairs.first != pairs.second).any(axis=-1)
        assert not (differ & ~changed).any()
        assert (differ.sum(axis=(1, 2)) > 0).all()
        assert (changed.sum(axis=(1, 2)) >= config.min_caption_pixels).all()  # visible parts
        sp = plan(config)
        specs = {s.name: s for s in sp.samples}
        for i, name in enumerate(pairs.names):
            spec = specs[name]
            assert spec.split in ("query", "gallery") and spec.pid == pairs.pids[i] != 0
            assert spec.cam == pairs.camids[i]
            part = pairs.part_names[pairs.changed[i]]
            assert re.fullmatch(rf"{part}( pattern)?: \w+ -> \w+", pairs.changes[i])
        i = 0
        assert np.array_equal(pairs.first[i], render_sample(sp, specs[pairs.names[i]])
                              .rendered.image)
        # the least-used visible part is changed next: every part kind gets its share
        counts = np.bincount(pairs.changed, minlength=len(PARTS))
        assert {PARTS[k] for k in np.nonzero(counts)[0]} >= {"upper_body", "lower_body",
                                                             "shoes", "hair"}
        assert counts.max() - counts[[PARTS.index(p) for p in ("upper_body", "lower_body",
                                                               "shoes")]].min() <= 2


def test_check_pair_catches_a_change_outside_the_part():
    sp = plan(PAIRS)
    spec = _first_spec_showing(sp, "shoes")
    first, second = changed_part_pair(sp, spec, "shoes", np.random.default_rng(1))
    assert check_pair(first, second, "shoes") > 0
    outside = np.argwhere(first.labels != LABEL["shoes"])[0]
    second.image[tuple(outside)] ^= 0xFF
    with pytest.raises(RuntimeError, match="outside the part"):
        check_pair(first, second, "shoes")


def test_change_part_changes_one_field_visibly():
    sp = plan(PAIRS)
    person = next(p for p in sp.identities if p.get("age") != "old")
    rng = np.random.default_rng(3)
    for part in ("upper_body", "lower_body", "shoes", "hair"):
        changed, text = change_part(person, part, rng, "colour")
        old, new = text.split(": ")[1].split(" -> ")
        assert old != new and changed.pid == person.pid
        diff_attrs = [k for (k, v), (_, v2) in zip(person.attributes, changed.attributes,
                                                   strict=True) if v != v2]
        diff_detail = [k for k, v in vars(person.detail).items()
                       if vars(changed.detail)[k] != v]
        assert len(diff_attrs) + len(diff_detail) == 1, (part, diff_attrs, diff_detail)


@pytest.mark.parametrize("call, message", [
    (lambda: changed_part_pairs(PAIRS, 0), "n_pairs"),
    (lambda: changed_part_pairs(PAIRS, 3, split="val"), "split"),
    (lambda: changed_part_pairs(PAIRS, 3, parts=("head",)), "parts"),
    (lambda: changed_part_pairs(replace(PAIRS, n_ids=4), 500, parts=("hat",)), "n_pairs"),
    (lambda: change_part(plan(PAIRS).identities[0], "upper_body", np.random.default_rng(0),
                         "texture"), "kind"),
])
def test_bad_pair_options_name_the_option(call, message):
    with pytest.raises(InputError, match=message):
        call()


def test_unchangeable_part_is_refused():
    sp = plan(PAIRS)
    spec = next(s for s in sp.samples if s.pid and sp.identity_of(s).get("hat") == "no")
    with pytest.raises(InputError, match="'hat' cannot be changed"):
        changed_part_pair(sp, spec, "hat", np.random.default_rng(0))
    distractor = next(s for s in sp.samples if s.pid == 0)
    with pytest.raises(InputError, match="pid 0"):
        changed_part_pair(sp, distractor, "shoes", np.random.default_rng(0))


@pytest.mark.parametrize("field, value", [
    ("crops", "sideways"), ("crop_scale", (0.9, 0.5)), ("crop_scale", 0.7),
    ("crop_shift", (0.5, 0.1)), ("crop_cut_prob", 1.5), ("crop_passerby_prob", -0.1)])
def test_bad_crop_options_name_the_field(field, value):
    with pytest.raises(InputError, match=rf"SynthConfig: {field} "):
        SynthConfig(**{field: value})
