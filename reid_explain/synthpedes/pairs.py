"""SynthPedes changed-part pairs: an image and its re-render with exactly one part changed.

Why: an explanation map that *looks* at the image must respond where the image changed; one
that only guesses where a person usually stands cannot. A pair keeps everything but one part
(identity, camera, view, pose, crop, passer-by, noise seed) and changes that part's garment
colour or pattern, never its shape. So the two images differ **only inside the changed part's
mask**, and both have the same label map: the mask is exact ground truth for "what changed".

How: the second image is rendered by :func:`~reid_explain.synthpedes.planning.render_sample` from a
copy of the plan in which only this identity is replaced by the changed one, so every other
draw (the image's own seed, the crop's generator, the passer-by) is the same. This holds for
``crops="aligned"`` and ``"misaligned"`` alike. The renderer's noise depends on the noise seed
and the canvas only (never on colours) and its painter writes a pixel's colour and label from
the same shape, so a recoloured part can only change pixels that carry its label; every pair is
checked for that before it is returned.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from reid_explain.data.schema import MARKET1501, PARTS
from reid_explain.errors import InputError
from reid_explain.synthpedes.identities import (
    ACCESSORY_COLOURS,
    COLOURS,
    HAIR_COLOURS,
    HAT_COLOURS,
    PATTERNS,
    SHOE_COLOURS,
    Identity,
)
from reid_explain.synthpedes.planning import SampleSpec, SynthConfig, SynthPlan, plan, render_sample
from reid_explain.synthpedes.rendering import LABEL, Rendered, masks_from_labels

#: parts a pair can change, and the identity field holding each part's colour
COLOUR_FIELDS: dict[str, str] = {
    "upper_body": "upper_color", "lower_body": "lower_color", "shoes": "shoe_colour",
    "hair": "hair_colour", "hat": "hat_colour", "backpack": "backpack_colour",
    "bag": "bag_colour", "handbag": "handbag_colour",
}
CHANGEABLE_PARTS: tuple[str, ...] = tuple(COLOUR_FIELDS)
_CHOICES: dict[str, tuple[str, ...]] = {
    "upper_body": MARKET1501["upper_color"].states,
    "lower_body": MARKET1501["lower_color"].states,
    "shoes": SHOE_COLOURS, "hair": HAIR_COLOURS, "hat": HAT_COLOURS,
    "backpack": ACCESSORY_COLOURS, "bag": ACCESSORY_COLOURS, "handbag": ACCESSORY_COLOURS,
}
#: colours closer than this (sum of |RGB| differences of the base colours) are not a change
#: a viewer would see, so they are not offered
MIN_COLOUR_DISTANCE = 60
#: a pattern change raises the stripe/check contrast to at least this, so that it shows
MIN_PATTERN_CONTRAST = 0.3
SPLITS: tuple[str, ...] = ("train", "test", "all")


@dataclass
class ChangedPartPairs:
    """N pairs: ``first[i]`` is the data set's image, ``second[i]`` the same with part
    ``part_names[changed[i]]`` changed as ``changes[i]`` says; ``masks[i]`` are the part masks of
    ``first[i]`` (the same for ``second[i]``: shapes never change)."""

    first: np.ndarray  # (N, H, W, 3) uint8
    second: np.ndarray  # (N, H, W, 3) uint8
    masks: np.ndarray  # (N, K, H, W) bool
    changed: np.ndarray  # (N,) int64, index into part_names
    part_names: tuple[str, ...]
    pids: np.ndarray  # (N,) int64
    camids: np.ndarray  # (N,) int64
    changes: list[str] = field(default_factory=list)  # "upper_body: red -> blue"
    names: list[str] = field(default_factory=list)  # Market file name of the first image

    def __len__(self) -> int:
        return len(self.changes)

    def changed_masks(self) -> np.ndarray:
        """(N, H, W) bool: the mask of the changed part of each pair."""
        return self.masks[np.arange(len(self)), self.changed]


def changeable_parts(identity: Identity) -> tuple[str, ...]:
    """Parts of ``identity`` a pair can change: garments and shoes always, hair unless it is
    grey (old people's hair is always grey), accessories the identity has."""
    a = identity.as_dict()
    out = ["upper_body", "lower_body", "shoes"]
    if a["age"] != "old":
        out.append("hair")
    out += [p for p in ("hat", "backpack", "bag", "handbag") if a[p] == "yes"]
    return tuple(out)


def _distance(a: str, b: str) -> int:
    return int(np.abs(np.subtract(COLOURS[a], COLOURS[b])).sum())


def change_part(identity: Identity, part: str, rng: np.random.Generator,
                kind: str | None = None) -> tuple[Identity, str]:
    """``identity`` with one property of ``part`` changed, and the change as text.

    ``kind`` is ``"colour"`` or ``"pattern"`` (``upper_body`` only: its stripes or checks);
    None picks one (a pattern change for a quarter of the upper-body changes). Colours are drawn
    from the part's own colour set and must differ visibly (:data:`MIN_COLOUR_DISTANCE`).
    """
    if part not in changeable_parts(identity):
        raise InputError(f"part {part!r} cannot be changed for identity {identity.pid}; "
                         f"changeable: {list(changeable_parts(identity))}")
    if kind is None:
        kind = "pattern" if part == "upper_body" and rng.random() < 0.25 else "colour"
    if kind not in ("colour", "pattern") or (kind == "pattern" and part != "upper_body"):
        raise InputError(f"kind must be 'colour' (any part) or 'pattern' (upper_body), "
                         f"got {kind!r} for {part!r}")
    d = identity.detail
    if kind == "pattern":
        options = [p for p in PATTERNS if p not in ("plain", d.pattern)]
        new = options[int(rng.integers(len(options)))]
        detail = replace(d, pattern=new,
                         pattern_contrast=max(d.pattern_contrast, MIN_PATTERN_CONTRAST))
        return replace(identity, detail=detail), f"{part} pattern: {d.pattern} -> {new}"
    name = COLOUR_FIELDS[part]
    old = identity.get(name) if part in ("upper_body", "lower_body") else getattr(d, name)
    options = [c for c in _CHOICES[part] if _distance(c, old) >= MIN_COLOUR_DISTANCE]
    new = options[int(rng.integers(len(options)))]
    if part in ("upper_body", "lower_body"):
        attributes = tuple((k, new if k == name else v) for k, v in identity.attributes)
        changed = replace(identity, attributes=attributes)
    else:
        changed = replace(identity, detail=replace(d, **{name: new}))
    return changed, f"{part}: {old} -> {new}"


def render_as(synth_plan: SynthPlan, spec: SampleSpec, identity: Identity) -> Rendered:
    """``spec``'s image with ``identity`` in place of its own: same seed, view, crop, noise."""
    people = [identity if p.pid == spec.pid else p for p in synth_plan.identities]
    return render_sample(replace(synth_plan, identities=people), spec,
                         with_captions=False).rendered


def check_pair(first: Rendered, second: Rendered, part: str) -> int:
    """Raise unless the pair has equal label maps and differs only inside ``part``'s mask;
    returns how many pixels differ. A guard on the renderer's promise, cheap enough to run on
    every pair."""
    if not np.array_equal(first.labels, second.labels):
        raise RuntimeError(f"changed-part pair ({part}): the label maps differ")
    differ = (first.image != second.image).any(axis=-1)
    outside = int((differ & (first.labels != LABEL[part])).sum())
    if outside:
        raise RuntimeError(f"changed-part pair ({part}): {outside} pixels outside the part "
                           f"differ")
    return int(differ.sum())


def _pair(synth_plan: SynthPlan, spec: SampleSpec, part: str, rng: np.random.Generator,
          first: Rendered | None = None, kind: str | None = None
          ) -> tuple[Rendered, Rendered, str]:
    if spec.pid == 0:
        raise InputError(f"{spec.name}: distractor images (pid 0) have no identity to change")
    identity = synth_plan.identity_of(spec)
    changed, change = change_part(identity, part, rng, kind)
    if first is None:
        first = render_sample(synth_plan, spec, with_captions=False).rendered
    second = render_as(synth_plan, spec, changed)
    check_pair(first, second, part)
    return first, second, change


def changed_part_pair(synth_plan: SynthPlan, spec: SampleSpec, part: str,
                      rng: np.random.Generator, kind: str | None = None
                      ) -> tuple[Rendered, Rendered]:
    """The image of ``spec`` (exactly as the data set has it) and its re-render with ``part``
    changed (``kind`` as in :func:`change_part`; drawn from ``rng``). Works for both ``crops``
    options: the second image gets the same crop and passer-by. The part need not be visible;
    :func:`changed_part_pairs` picks visible ones."""
    first, second, _ = _pair(synth_plan, spec, part, rng, kind=kind)
    return first, second


def _specs(synth_plan: SynthPlan, split: str) -> list[SampleSpec]:
    if split not in SPLITS:
        raise InputError(f"split must be one of {list(SPLITS)}, got {split!r}")
    wanted = {"train": ("train",), "test": ("query", "gallery"),
              "all": ("train", "query", "gallery")}[split]
    return [s for s in synth_plan.samples if s.pid != 0 and s.split in wanted]


def changed_part_pairs(config: SynthConfig, n_pairs: int, split: str = "test", seed: int = 0,
                       parts: Sequence[str] | None = None) -> ChangedPartPairs:
    """``n_pairs`` changed-part pairs from the images of ``split`` (``"train"``, ``"test"`` =
    query + gallery, or ``"all"``; never distractors) of the data set ``config``.

    Only parts visible in the image (at least ``config.min_caption_pixels`` pixels, the same
    rule as the captions) are changed. Images are taken in an order drawn from ``seed``; for
    each, the visible changeable part used least so far is changed, so rare accessories get
    their share. When every image has been used once, images are reused with another part.
    ``parts`` restricts the parts that may be changed (default :data:`CHANGEABLE_PARTS`).
    """
    if not isinstance(n_pairs, int) or n_pairs < 1:
        raise InputError(f"n_pairs must be a positive integer, got {n_pairs!r}")
    allowed = CHANGEABLE_PARTS if parts is None else tuple(parts)
    unknown = [p for p in allowed if p not in CHANGEABLE_PARTS]
    if unknown or not allowed:
        raise InputError(f"parts: {unknown or 'none given'}; changeable parts are "
                         f"{list(CHANGEABLE_PARTS)}")
    synth_plan = plan(config)
    specs = _specs(synth_plan, split)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([config.seed, 0x9A1, seed])))
    order = [specs[int(i)] for i in rng.permutation(len(specs))]
    used: Counter[str] = Counter()
    done: set[tuple[str, str]] = set()
    rows: list[tuple[SampleSpec, str, Rendered, Rendered, str]] = []
    while len(rows) < n_pairs:
        before = len(rows)
        for spec in order:
            if len(rows) == n_pairs:
                break
            identity = synth_plan.identity_of(spec)
            first = render_sample(synth_plan, spec, with_captions=False).rendered
            candidates = [p for p in changeable_parts(identity) if p in allowed
                          and (spec.name, p) not in done
                          and first.part_pixels[p] >= config.min_caption_pixels]
            if not candidates:
                continue
            shuffled = [candidates[int(i)] for i in rng.permutation(len(candidates))]
            part = min(shuffled, key=lambda p: used[p])  # stable: ties keep the random order
            first, second, change = _pair(synth_plan, spec, part, rng, first)
            used[part] += 1
            done.add((spec.name, part))
            rows.append((spec, part, first, second, change))
        if len(rows) == before:
            raise InputError(f"n_pairs: split {split!r} of this data set allows only "
                             f"{len(rows)} pairs with visible parts {list(allowed)}, "
                             f"asked for {n_pairs}")
    return ChangedPartPairs(
        first=np.stack([r[2].image for r in rows]),
        second=np.stack([r[3].image for r in rows]),
        masks=np.stack([masks_from_labels(r[2].labels) for r in rows]),
        changed=np.array([PARTS.index(r[1]) for r in rows], dtype=np.int64),
        part_names=tuple(PARTS),
        pids=np.array([r[0].pid for r in rows], dtype=np.int64),
        camids=np.array([r[0].cam for r in rows], dtype=np.int64),
        changes=[r[4] for r in rows],
        names=[r[0].name for r in rows],
    )
