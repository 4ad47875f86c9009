"""SynthPedes data set plan: which images exist (ids, cameras, splits) and how each is made.

Why a plan: Market-1501's evaluation protocol lives in its split (train and test ids disjoint;
per test id one query per camera, the rest in the gallery with pid-0 distractors). The plan fixes
that split from the seed alone, and each image is then rendered from its own seed
``(seed, pid, cam, idx)``, so any image can be regenerated alone and in any order.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import cached_property

import numpy as np

from reid_explain.errors import InputError
from reid_explain.synthpedes.captions import Caption, make_captions
from reid_explain.synthpedes.identities import (
    Identity,
    make_identities,
    planted_entropies,
    resolve_planted_order,
)
from reid_explain.synthpedes.rendering import (
    Camera,
    Rendered,
    View,
    make_cameras,
    render,
    sample_view,
)

MAX_MARKET_PID = 1501  # torchreid's Market1501 asserts 0 <= pid <= 1501
MAX_MARKET_CAMS = 6  # and 1 <= camid <= 6


def _gen(*words: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(words))))


@dataclass(frozen=True)
class SynthConfig:
    """All knobs of a SynthPedes data set; the same config always yields the same bytes."""

    n_ids: int = 100
    images_per_id: int = 8
    seed: int = 0
    height: int = 128
    width: int = 64
    n_cams: int = 6
    planted_order: tuple[str, ...] | None = None
    planted_decay: float = 0.88
    detail_strength: float = 0.3
    couple: bool = True
    occlusion_prob: float = 0.15
    captions_per_image: int = 2
    distractors: int | None = None
    train_fraction: float = 0.5
    val_fraction: float = 0.1
    min_caption_pixels: int = 8
    jpeg_quality: int = 95
    #: "aligned" (rendered crops) or "misaligned" (detector-like boxes; synth_crops.py)
    crops: str = "aligned"
    #: misaligned: the person's size in the crop relative to an aligned crop (loose boxes)
    crop_scale: tuple[float, float] = (0.6, 1.0)
    #: misaligned: the box's largest shift, as fractions of its width and height
    crop_shift: tuple[float, float] = (0.25, 0.15)
    #: misaligned: probability of a tight box that cuts the head or the feet
    crop_cut_prob: float = 0.25
    #: misaligned: probability of a passer-by entering at the left or right edge
    crop_passerby_prob: float = 0.3

    def __post_init__(self) -> None:
        if self.planted_order is not None:
            object.__setattr__(self, "planted_order", tuple(self.planted_order))
        for name in ("crop_scale", "crop_shift"):
            value = getattr(self, name)
            if not (isinstance(value, (tuple, list)) and len(value) == 2):
                raise InputError(f"SynthConfig: {name} must be a pair of numbers, got {value!r}")
            object.__setattr__(self, name, (float(value[0]), float(value[1])))
        resolve_planted_order(self.planted_order)  # raises InputError on unknown names
        planted_entropies(self.planted_order, self.planted_decay)
        checks = [
            (2 <= self.n_ids <= MAX_MARKET_PID,
             f"n_ids must be in 2..{MAX_MARKET_PID} (Market-1501 pids), got {self.n_ids}"),
            (self.images_per_id >= 4,
             f"images_per_id must be >= 4 (2 cameras x (query + gallery)), "
             f"got {self.images_per_id}"),
            (2 <= self.n_cams <= MAX_MARKET_CAMS,
             f"n_cams must be in 2..{MAX_MARKET_CAMS} (Market-1501 camera digit), "
             f"got {self.n_cams}"),
            (self.height >= 16 and self.width >= 8,
             f"image size must be at least 16x8, got {self.height}x{self.width}"),
            (self.captions_per_image >= 1,
             f"captions_per_image must be >= 1, got {self.captions_per_image}"),
            (0.0 < self.train_fraction < 1.0,
             f"train_fraction must be in (0, 1), got {self.train_fraction}"),
            (0.0 <= self.val_fraction < 1.0,
             f"val_fraction must be in [0, 1), got {self.val_fraction}"),
            (0.0 <= self.occlusion_prob <= 1.0,
             f"occlusion_prob must be in [0, 1], got {self.occlusion_prob}"),
            (self.distractors is None or self.distractors >= 0,
             f"distractors must be >= 0, got {self.distractors}"),
            (1 <= self.jpeg_quality <= 100,
             f"jpeg_quality must be 1..100, got {self.jpeg_quality}"),
            (self.crops in ("aligned", "misaligned"),
             f"crops must be 'aligned' or 'misaligned', got {self.crops!r}"),
            (0.4 <= self.crop_scale[0] <= self.crop_scale[1] <= 1.0,
             f"crop_scale must be (low, high) with 0.4 <= low <= high <= 1, "
             f"got {self.crop_scale}"),
            (0.0 <= self.crop_shift[0] <= 0.4 and 0.0 <= self.crop_shift[1] <= 0.4,
             f"crop_shift must be fractions in [0, 0.4], got {self.crop_shift}"),
            (0.0 <= self.crop_cut_prob <= 1.0,
             f"crop_cut_prob must be in [0, 1], got {self.crop_cut_prob}"),
            (0.0 <= self.crop_passerby_prob <= 1.0,
             f"crop_passerby_prob must be in [0, 1], got {self.crop_passerby_prob}"),
        ]
        for ok, message in checks:
            if not ok:
                raise InputError(f"SynthConfig: {message}")

    def to_json(self) -> dict:
        out = asdict(self)
        out["planted_order"] = list(resolve_planted_order(self.planted_order))
        return out


@dataclass(frozen=True)
class SampleSpec:
    """One planned image. ``pid`` 0 marks a distractor (a Market-1501 "0000" image)."""

    name: str
    pid: int
    cam: int
    idx: int
    split: str  # "train", "query" or "gallery"


@dataclass
class Sample:
    spec: SampleSpec
    identity: Identity
    rendered: Rendered
    captions: list[Caption] = field(default_factory=list)


@dataclass
class SynthPlan:
    """Identities, cameras and the list of images of one SynthPedes data set."""

    config: SynthConfig
    identities: list[Identity]
    distractor_identities: list[Identity]
    cameras: list[Camera]
    train_pids: list[int]
    test_pids: list[int]
    val_pids: list[int]
    samples: list[SampleSpec]

    @cached_property
    def identity_by_pid(self) -> dict[int, Identity]:
        return {identity.pid: identity for identity in self.identities}

    def identity_of(self, spec: SampleSpec) -> Identity:
        if spec.pid == 0:
            return self.distractor_identities[spec.idx]
        return self.identity_by_pid[spec.pid]

    def split_of_pid(self, pid: int) -> str:
        """CUHK-PEDES split of an identity: test ids are "test", a few train ids are "val"."""
        if pid in self._val_set:
            return "val"
        return "train" if pid in self._train_set else "test"

    @cached_property
    def _val_set(self) -> set[int]:
        return set(self.val_pids)

    @cached_property
    def _train_set(self) -> set[int]:
        return set(self.train_pids)


def _name(pid: int, cam: int, idx: int) -> str:
    return f"{pid:04d}_c{cam}s1_{25 * (idx + 1):06d}_00.jpg"


def plan(config: SynthConfig) -> SynthPlan:
    """Identities, cameras and the Market-1501-style split for ``config``."""
    c = config
    identities = make_identities(c.n_ids, c.seed, c.planted_order, c.planted_decay,
                                 c.detail_strength, couple=c.couple)
    cameras = make_cameras(c.n_cams, c.seed)
    order = _gen(c.seed, 0x5B1).permutation(np.arange(1, c.n_ids + 1))
    n_train = min(max(1, round(c.train_fraction * c.n_ids)), c.n_ids - 1)
    train = sorted(int(p) for p in order[:n_train])
    test = sorted(int(p) for p in order[n_train:])
    n_val = min(round(c.val_fraction * n_train), n_train - 1) if c.val_fraction > 0 else 0
    if c.val_fraction > 0 and n_train >= 2:
        n_val = max(n_val, 1)
    val = train[len(train) - n_val:] if n_val else []
    samples: list[SampleSpec] = []
    max_cams = min(c.n_cams, c.images_per_id // 2)
    for pid in range(1, c.n_ids + 1):
        rng = _gen(c.seed, 0xCA5, pid)
        k = int(rng.integers(2, max_cams + 1))
        cams = sorted(int(x) + 1 for x in rng.choice(c.n_cams, size=k, replace=False))
        is_test = pid not in train
        queried: set[int] = set()
        for idx in range(c.images_per_id):
            cam = cams[idx % k]
            split = "train"
            if is_test:
                split = "gallery" if cam in queried else "query"
                queried.add(cam)
            samples.append(SampleSpec(_name(pid, cam, idx), pid, cam, idx, split))
    n_distractors = len(test) // 2 if c.distractors is None else c.distractors
    distractor_ids = make_identities(
        max(n_distractors, 1), int(np.random.SeedSequence([c.seed, 0xD15]).generate_state(1)[0]),
        c.planted_order, c.planted_decay, c.detail_strength, first_pid=0, couple=c.couple)
    for j in range(n_distractors):
        cam = 1 + j % c.n_cams
        samples.append(SampleSpec(_name(0, cam, j), 0, cam, j, "gallery"))
    return SynthPlan(c, identities, distractor_ids[:n_distractors], cameras, train, test, val,
                     samples)


def render_sample(synth_plan: SynthPlan, spec: SampleSpec, with_captions: bool = True) -> Sample:
    """Render one planned image (and its captions) from its own seed."""
    c = synth_plan.config
    identity = synth_plan.identity_of(spec)
    camera = synth_plan.cameras[spec.cam - 1]
    rng = _gen(c.seed, spec.pid, spec.cam, spec.idx)
    view = sample_view(rng, camera, c.occlusion_prob)
    if spec.pid == 0:  # a bad detection: a passer-by mostly out of the box
        side = 1 if rng.random() < 0.5 else -1
        view = replace(view, dx=round(side * float(rng.uniform(0.3, 0.45)), 4))
    if c.crops == "misaligned" and spec.pid != 0:
        rendered = _misaligned(synth_plan, spec, identity, camera, view)
    else:
        rendered = render(identity, camera, view, c.height, c.width)
    captions: list[Caption] = []
    if with_captions and spec.pid != 0:
        captions = make_captions(identity, rendered.part_pixels, rng, c.captions_per_image,
                                 c.min_caption_pixels)
    return Sample(spec, identity, rendered, captions)


def _misaligned(synth_plan: SynthPlan, spec: SampleSpec, identity: Identity, camera: Camera,
                view: View) -> Rendered:
    """The detector-like crop of one image, drawn from its own generator (never the image's,
    so aligned sets stay byte-identical)."""
    from reid_explain.synthpedes.crops import draw_crop, render_misaligned

    c = synth_plan.config
    others = synth_plan.distractor_identities or synth_plan.identities
    draw = draw_crop(_gen(c.seed, 0xC20B, spec.pid, spec.cam, spec.idx), (c.height, c.width),
                     c.crop_scale, c.crop_shift, c.crop_cut_prob, c.crop_passerby_prob,
                     len(others), camera, sample_view)
    passerby = others[draw.passerby] if draw.passerby >= 0 else None
    if passerby is not None and passerby.pid == identity.pid:
        passerby = None
    return render_misaligned(identity, camera, view, draw, passerby, c.height, c.width)


def iter_samples(synth_plan: SynthPlan, specs: Sequence[SampleSpec] | None = None,
                 with_captions: bool = True) -> Iterator[Sample]:
    for spec in synth_plan.samples if specs is None else specs:
        yield render_sample(synth_plan, spec, with_captions)
