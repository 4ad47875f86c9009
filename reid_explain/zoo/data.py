"""The zoo's SynthPedes splits, rendered in memory: train, validation and test.

Train and validation identities come from the SynthPedes train side (validation = its ``val``
identities, never trained on, used for learning curves); test identities are the data set's
held-out query/gallery side (without pid-0 distractors), scored with the Market-1501 rule that
a same-identity same-camera gallery image is not a match. Every
image keeps its pid, camera, captions and part masks so the same splits serve image ReID,
text-image ReID and grounding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass
class ZooSplit:
    """Images of one split with everything known about them."""

    images: np.ndarray  # (N, H, W, 3) uint8
    pids: np.ndarray
    camids: np.ndarray
    is_query: np.ndarray  # bool, meaningful for the evaluation splits
    captions: list[list[str]]  # per image
    phrases: list[list[list[dict[str, Any]]]]  # per image, per caption
    masks: np.ndarray | None = None  # (N, K, H, W) bool

    def __len__(self) -> int:
        return len(self.pids)

    def subset(self, keep: np.ndarray) -> ZooSplit:
        idx = np.flatnonzero(keep)
        return ZooSplit(self.images[idx], self.pids[idx], self.camids[idx], self.is_query[idx],
                        [self.captions[i] for i in idx], [self.phrases[i] for i in idx],
                        None if self.masks is None else self.masks[idx])

    def tensor(self, mean: Sequence[float], std: Sequence[float],
               rows: Sequence[int] | Tensor | None = None) -> Tensor:
        """Normalised ``(N, 3, H, W)`` float images (all, or ``rows``)."""
        from ..core.inputs import normalised_images

        images = self.images if rows is None else self.images[np.asarray(rows)]
        return normalised_images(images, mean, std)


def render_splits(data: dict[str, Any], with_masks: bool = False,
                  max_ids: dict[str, int] | None = None,
                  splits: Sequence[str] = ("train", "val", "test"),
                  pid_splits: dict[str, Sequence[int]] | None = None) -> dict[str, ZooSplit]:
    """``train``, ``val`` and ``test`` splits of the SynthPedes set ``data`` (SynthConfig fields).

    ``max_ids`` caps the identities per split (the demo renders only part of the test split);
    ``splits`` chooses which are rendered. ``pid_splits`` (split name -> identities) replaces
    the data set's own split, e.g. to hold out garment/colour combinations
    (:func:`heldout_pid_splits`); every image of those identities is rendered.
    Validation images are marked query/gallery like the test split: the first image of each
    identity on each camera is a query.
    """
    from ..synthpedes.planning import SynthConfig, iter_samples, plan
    from ..synthpedes.rendering import masks_from_labels

    synth = plan(SynthConfig(**data))
    val = set(synth.val_pids)
    keep_ids = {"train": sorted(set(synth.train_pids) - val), "val": sorted(val),
                "test": sorted(synth.test_pids)}
    if pid_splits is not None:
        keep_ids = {k: sorted(int(p) for p in v) for k, v in pid_splits.items()}
        splits = tuple(keep_ids)
    keep_ids = {k: v for k, v in keep_ids.items() if k in splits}
    if max_ids:
        keep_ids = {k: v[:max_ids[k]] if k in max_ids else v for k, v in keep_ids.items()}
    split_of = {pid: name for name, pids in keep_ids.items() for pid in pids}
    specs = [s for s in synth.samples if s.pid in split_of]
    rows: dict[str, dict[str, list]] = {name: {"images": [], "pids": [], "camids": [],
                                               "is_query": [], "captions": [], "phrases": [],
                                               "masks": []} for name in keep_ids}
    seen_cams: set[tuple[int, int]] = set()
    for sample in iter_samples(synth, specs):
        spec = sample.spec
        name = split_of[spec.pid]
        out = rows[name]
        if name == "test" and pid_splits is None:
            query = spec.split == "query"
        else:
            query = (spec.pid, spec.cam) not in seen_cams
            seen_cams.add((spec.pid, spec.cam))
        out["images"].append(sample.rendered.image)
        out["pids"].append(spec.pid)
        out["camids"].append(spec.cam)
        out["is_query"].append(query)
        out["captions"].append([c.text for c in sample.captions])
        out["phrases"].append([[{"start": p.start, "end": p.end, "text": p.text, "part": p.part}
                                for p in c.phrases] for c in sample.captions])
        if with_masks:
            out["masks"].append(masks_from_labels(sample.rendered.labels))
    return {name: ZooSplit(images=np.stack(r["images"]), pids=np.asarray(r["pids"]),
                           camids=np.asarray(r["camids"]), is_query=np.asarray(r["is_query"]),
                           captions=r["captions"], phrases=r["phrases"],
                           masks=np.stack(r["masks"]) if with_masks else None)
            for name, r in rows.items()}


def text_image_data(split: ZooSplit, mean: Sequence[float], std: Sequence[float]) -> Any:
    """A split as :class:`~reid_explain.training.text_image.TextImageData` (one row a caption)."""
    from ..data.schema import PARTS
    from ..training.text_image import TextImageData

    captions, owner, phrases = [], [], []
    for i, (texts, spans) in enumerate(zip(split.captions, split.phrases, strict=True)):
        captions.extend(texts)
        owner.extend([i] * len(texts))
        phrases.extend(spans)
    return TextImageData(images=split.tensor(mean, std), image_pids=split.pids,
                         captions=captions, caption_image=np.asarray(owner), phrases=phrases,
                         masks=None if split.masks is None else torch.from_numpy(split.masks),
                         part_names=PARTS)


def garment_pairs(identity: Any) -> tuple[str, str]:
    """The (garment, colour) combinations an identity wears, as its captions name them:
    sleeve length x upper colour, and lower garment (trousers, shorts, long or short
    dress/skirt) x lower colour."""
    lower = {("pants", "long"): "trousers", ("pants", "short"): "shorts",
             ("dress", "long"): "long dress", ("dress", "short"): "short dress"}[
        (identity.get("clothes"), identity.get("lower_length"))]
    return (f"{identity.get('upper_color')} {identity.get('sleeve')}-sleeved top",
            f"{identity.get('lower_color')} {lower}")


def heldout_pid_splits(data: dict[str, Any], test_share: float = 0.25, val_share: float = 0.15,
                       seed: int = 0) -> tuple[dict[str, list[int]], dict[str, list[str]]]:
    """Identities split so that test and validation wear garment/colour combinations that no
    training identity wears (open-vocabulary phrases: "green shorts" never seen in training).

    Combinations are drawn in a seeded random order and held out for the test split until it
    holds ``test_share`` of the identities, then for validation up to ``val_share``; a
    combination worn by more than half of a split's target is skipped, so no split is one
    common garment. An identity wearing a test combination is a test identity; else one
    wearing a validation combination is a validation identity; all others train.
    Returns the identities per split and the held-out combinations per split.
    """
    from ..synthpedes.planning import SynthConfig, plan

    people = [p for p in plan(SynthConfig(**data)).identities if p.pid != 0]
    pairs = {p.pid: garment_pairs(p) for p in people}
    candidates = sorted({c for worn in pairs.values() for c in worn})
    order = [candidates[i] for i in np.random.default_rng(seed).permutation(len(candidates))]
    held: dict[str, set[str]] = {"test": set(), "val": set()}

    def members(name: str) -> set[int]:  # test identities first, then validation ones
        taken = members("test") if name == "val" else set()
        return {pid for pid, worn in pairs.items() if held[name] & set(worn)} - taken

    for name, share in (("test", test_share), ("val", val_share)):
        target = share * len(people)
        for combo in order:
            if len(members(name)) >= target:
                break
            if any(combo in h for h in held.values()):
                continue
            wearers = sum(combo in worn for worn in pairs.values())
            if wearers > 0.5 * target:
                continue
            held[name].add(combo)
    test, val = members("test"), members("val")
    split = {"train": sorted(set(pairs) - test - val), "val": sorted(val), "test": sorted(test)}
    return split, {k: sorted(v) for k, v in held.items()}
