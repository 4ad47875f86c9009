"""PPIM's mechanism where only grounding can succeed: a synthetic task with no location prior.

Every image holds three parts ("hat", "bag", "shoe"), each a square of ``part_cells`` x
``part_cells`` patches at a random place of the patch grid, told apart by texture only
(horizontal stripes, vertical stripes, solid) and coloured from four colours drawn with
replacement, so that two parts of one image often share a colour. Every caption names one
part's colour ("a red hat"), so only the patches of that part answer it: a map drawn from
where parts usually are scores chance, and a map of "everything red" puts half its mass on
the wrong part.

:func:`run_mechanism` trains a tiny CLIP from scratch with the PPIM loss alone
(``objective="none"``: the head and its losses, nothing else) and scores the head's phrase
maps on held-out images against the parts' masks, beside the head-free phrase-patch
similarity, the location prior, the part's own mask drawn on the patch grid (0.87: its edge
cells spill onto the neighbours when upsampled bilinearly, as every map is) and the ceiling,
the best single cell (1.0 here: a 3x3-patch part's centre cell stays inside it).

What the defect hunt found (docs/interpartability.md, "The mechanism test"): keys and values
taken after a block's attention carry the whole image (``patch_block="embed"`` reads the patch
embeddings before any block); a softmax sharp from the first step never finds a part it starts
off (``temperature_warmup``); and with one shoe in every image, "blue shoe" can learn to mean
"no other colour of solid square here" and match the background (``whole_image_negative``).
False negatives in the image contrast (``image_negatives="other_text"``, now with every caption
of an identity) hurt without the last fix and are harmless with it.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .._util.io import strict_json
from ..training.text_image import (
    OPENAI_MEAN,
    OPENAI_STD,
    TextImageData,
    TinyClipConfig,
    TrainConfig,
    _to_tensor,
    tiny_clip,
    train_text_image,
)

PARTS = ("hat", "bag", "shoe")
#: the PPIM options the defect hunt arrived at (each one's effect: docs/interpartability.md)
MECHANISM_PPIM: dict[str, Any] = {"patch_block": "embed", "temperature_warmup": 40,
                                  "whole_image_negative": True}
COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220),
           "yellow": (230, 210, 30)}


def _texture(part: str, rgb: tuple[int, int, int], size: int) -> np.ndarray:
    """A part's square: its colour in horizontal stripes (hat), vertical stripes (bag) or
    solid (shoe), on black."""
    block = np.zeros((size, size, 3), np.uint8)
    colour = np.asarray(rgb, np.uint8)
    if part == "hat":
        block[0::2] = colour
    elif part == "bag":
        block[:, 0::2] = colour
    else:
        block[:] = colour
    return block


def grounding_only_task(n_images: int, seed: int, image_size: int = 32, patch_size: int = 4,
                        part_cells: int = 3) -> TextImageData:
    """``n_images`` images, each with every part at a random, non-overlapping place of the
    patch grid, and one caption per part (``"a {colour} {part}"``, its phrase spanning
    ``"{colour} {part}"``); every image is its own identity, and masks mark each part."""
    if image_size % patch_size or part_cells * len(PARTS) > image_size // patch_size * 2:
        raise ValueError(f"{len(PARTS)} parts of {part_cells}x{part_cells} patches do not fit "
                         f"a {image_size}px image of {patch_size}px patches")
    rng = np.random.default_rng(seed)
    grid, side = image_size // patch_size, part_cells * patch_size
    images, masks, captions, owner, phrases = [], [], [], [], []
    for i in range(n_images):
        image = rng.integers(60, 100, (image_size, image_size, 3)).astype(np.uint8)
        mask = np.zeros((len(PARTS), image_size, image_size), bool)
        taken = np.zeros((grid, grid), bool)
        for k, part in enumerate(PARTS):
            for _ in range(1000):
                r, c = rng.integers(0, grid - part_cells + 1, 2)
                if not taken[r:r + part_cells, c:c + part_cells].any():
                    break
            else:
                raise RuntimeError("could not place the parts without overlap")
            taken[r:r + part_cells, c:c + part_cells] = True
            colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
            y, x = r * patch_size, c * patch_size
            image[y:y + side, x:x + side] = _texture(part, COLOURS[colour], side)
            mask[k, y:y + side, x:x + side] = True
            text = f"{colour} {part}"
            caption = f"a {text}"
            captions.append(caption)
            owner.append(i)
            phrases.append([{"start": 2, "end": len(caption), "part": part, "text": text}])
        images.append(image)
        masks.append(mask)
    return TextImageData(images=_to_tensor(images, OPENAI_MEAN, OPENAI_STD),
                         image_pids=np.arange(n_images) + seed * 1_000_000, captions=captions,
                         caption_image=np.asarray(owner), phrases=phrases,
                         masks=torch.as_tensor(np.stack(masks)), part_names=PARTS)


@dataclass
class MechanismConfig:
    """The task, the tiny CLIP and the PPIM training (defaults: the guarded test's)."""

    train_images: int = 400
    test_images: int = 100
    data_seed: int = 0
    model_seed: int = 0
    image_size: int = 32
    patch_size: int = 4
    part_cells: int = 3
    epochs: int = 6
    lr: float = 2e-3
    batch_size: int = 64
    objective: str = "none"
    ppim: dict[str, Any] = field(default_factory=lambda: dict(MECHANISM_PPIM))
    threads: int | None = None


def clip_config(config: MechanismConfig) -> TinyClipConfig:
    return TinyClipConfig(image_size=(config.image_size, config.image_size),
                          patch_size=config.patch_size, width=64, layers=2, head_width=32,
                          text_width=64, text_layers=1, text_heads=2, embed_dim=64,
                          context_length=16)


def _summary(scores: dict[str, Any]) -> dict[str, Any]:
    return {"energy": scores["energy"], "pointing": scores["pointing"],
            "by_part": {p: round(v["energy"], 4) for p, v in scores["by_part"].items()}}


def run_mechanism(config: MechanismConfig | None = None) -> dict[str, Any]:
    """Train with PPIM on the task, score the head's maps on held-out images."""
    from ..evaluation.phrase_grounding import (
        best_cell_phrase_maps,
        collect_phrase_maps,
        mask_phrase_maps,
        prior_phrase_maps,
        score_phrase_maps,
    )
    from ..explain.explainer import explainify

    config = config or MechanismConfig()
    previous = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    try:
        shape = {"image_size": config.image_size, "patch_size": config.patch_size,
                 "part_cells": config.part_cells}
        train = grounding_only_task(config.train_images, config.data_seed, **shape)
        test = grounding_only_task(config.test_images, config.data_seed + 1, **shape)
        clip = clip_config(config)
        model = tiny_clip(clip, seed=config.model_seed)
        start = time.perf_counter()
        history, session = train_text_image(model, train, TrainConfig(
            epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
            seed=config.model_seed, objective=config.objective, losses=("ppim",),
            loss_options={"ppim": dict(config.ppim)}))
        seconds = time.perf_counter() - start
        ppim = session.losses["ppim"]
        grid = clip.grid_size
        with explainify(model) as exp:
            scores = {m: _summary(score_phrase_maps(test, collect_phrase_maps(
                exp, test, m, ppim=ppim))) for m in ("ppim", "similarity")}
        scores["location_prior"] = _summary(score_phrase_maps(
            test, prior_phrase_maps(train, test, grid)))
        scores["part_mask"] = _summary(score_phrase_maps(test, mask_phrase_maps(test, grid)))
        scores["ceiling"] = _summary(score_phrase_maps(test, best_cell_phrase_maps(test, grid)))
    finally:
        torch.set_num_threads(previous)
    return {"config": asdict(config), "scores": scores, "train_seconds": round(seconds, 1),
            "final_loss": {k: round(v, 4) for k, v in history[-1].items()
                           if isinstance(v, float)}}


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m reid_explain.studies.ppim_mechanism [--ppim JSON] [--seeds ...]``"""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0],
                        help="data seeds (the model seed is the data seed too)")
    parser.add_argument("--epochs", type=int, default=MechanismConfig.epochs)
    parser.add_argument("--objective", default="none")
    parser.add_argument("--ppim", type=json.loads, default=None,
                        help="PPIM options as JSON (default: the test's)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    for seed in args.seeds:
        config = MechanismConfig(data_seed=seed, model_seed=seed, epochs=args.epochs,
                                 objective=args.objective, threads=args.threads)
        if args.ppim is not None:
            config.ppim = args.ppim
        print(strict_json(run_mechanism(config), indent=None), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
