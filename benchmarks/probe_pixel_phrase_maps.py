"""Phrase maps at pixel resolution against the pixel-resolution per-part prior (issue 25).

Phrase maps live on the host's patch grid (16x8 for the zoo CLIP at 128x64), where a part of
one or two patches cannot be drawn: the best single cell scores 0.34 (shoes) to 0.55 (hair).
The field's remedy for a coarse map is to multiply it by pixel-level gradients (Guided
Grad-CAM). This probe asks whether that lets phrase maps beat the image-blind reference once
both sides are drawn at pixel resolution:

* ``relevance``: gradient-weighted attention relevance on the grid (the best phrase method);
* ``ig+`` / ``|ig|``: integrated gradients of the phrase's cosine, per pixel;
* ``grad``: the gradient's magnitude per pixel;
* ``relevance x grad`` / ``relevance x ig+`` / ``relevance x |ig|``: the upsampled relevance
  times the pixel factor, as Guided Grad-CAM multiplies Grad-CAM by guided backpropagation.

The reference is each part's mean training mask at *pixel* resolution, raised to a power
(the library's ``choose_phrase_reference`` / ``prior_phrase_maps`` with the image as the grid).
Choices (each method's power, each part's prior power) are made on the validation seed's
identities, the prior built on one half and chosen on the other; the test seed is scored
once with those choices, on the same protocol.

    python benchmarks/probe_pixel_phrase_maps.py --val-seed 778 --test-seed 779 --ids 40
    python benchmarks/probe_pixel_phrase_maps.py --crops misaligned \
        --out benchmarks/results_pixel_phrase_maps_misaligned.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

import reid_explain
from reid_explain import zoo
from reid_explain.evaluation.phrase_grounding import (
    PhraseMaps,
    choose_phrase_reference,
    collect_phrase_maps,
    identity_subset,
    phrase_verdict,
    prior_phrase_maps,
    score_phrase_maps,
)
from reid_explain.plugin_api.maps import sharpen_maps
from reid_explain.plugin_api.targets import CosineSimilarity
from reid_explain.zoo.data import render_splits, text_image_data
from reid_explain.zoo.registry import card

POWERS = (1, 2, 4, 8, 16, 32, 64)


def load(exp: Any, seed: int, ids: int, crops: str = "aligned") -> Any:
    config = {**card("clip-synthpedes")["data"]["config"], "seed": seed, "crops": crops}
    split = render_splits(config, with_masks=True, max_ids={"train": ids},
                          splits=("train",))["train"]
    return text_image_data(split, exp.adapter.pixel_mean, exp.adapter.pixel_std)


def pixel_factor(exp: Any, data: Any, template: PhraseMaps, kind: str) -> PhraseMaps:
    """Per phrase, a pixel map of its cosine with the image: ``"grad"`` (|gradient| summed
    over colours) or ``"ig"`` (integrated gradients, signed, summed over colours)."""
    out = PhraseMaps(kind, template.image_size)
    for row, phrases in zip(template.rows, template.phrases, strict=True):
        texts = [p["text"] for p in phrases]
        if not texts:
            out.append(row, phrases, None)
            continue
        image = data.images[int(data.caption_image[row])][None].expand(len(texts), -1, -1, -1)
        text = exp.embed_text(texts)
        if kind == "ig":
            maps = exp.attribute(image, CosineSimilarity(text), method="integrated_gradients")
        else:
            x = image.clone().requires_grad_(True)
            score = (F.normalize(exp.adapter.embed_image(x), dim=-1)
                     * F.normalize(text, dim=-1)).sum()
            (grad,) = torch.autograd.grad(score, x)
            maps = grad.abs().sum(1)
        out.append(row, phrases, maps.detach())
    return out


def candidates(exp: Any, data: Any) -> dict[str, PhraseMaps]:
    relevance = collect_phrase_maps(exp, data, "attention_relevance")
    grad = pixel_factor(exp, data, relevance, "grad")
    ig = pixel_factor(exp, data, relevance, "ig")
    size = relevance.image_size

    def up(maps: torch.Tensor) -> torch.Tensor:
        return F.interpolate(maps[:, None], size=size, mode="bilinear",
                             align_corners=False)[:, 0].clamp_min(0)

    def times(factor: PhraseMaps, fn: Callable[[torch.Tensor], torch.Tensor]
              ) -> Callable[[int, torch.Tensor], torch.Tensor]:
        return lambda i, m: up(m) * fn(factor.maps[i])

    return {
        "relevance": relevance,
        "grad": grad,
        "ig+": ig.mapped("ig+", lambda i, m: m.clamp_min(0)),
        "|ig|": ig.mapped("|ig|", lambda i, m: m.abs()),
        "relevance x grad": relevance.mapped("relevance x grad", times(grad, lambda g: g)),
        "relevance x ig+": relevance.mapped("relevance x ig+",
                                            times(ig, lambda g: g.clamp_min(0))),
        "relevance x |ig|": relevance.mapped("relevance x |ig|", times(ig, torch.abs)),
    }


def sharpened(maps: PhraseMaps, power: float) -> PhraseMaps:
    return maps if power == 1 else maps.mapped(maps.method, lambda i, m: sharpen_maps(m, power))


def brief(scores: dict[str, Any]) -> dict[str, Any]:
    return {"energy": scores["energy"], "pointing": scores["pointing"],
            "by_part": {k: round(v["energy"], 4) for k, v in scores["by_part"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--val-seed", type=int, default=778)
    parser.add_argument("--test-seed", type=int, default=779)
    parser.add_argument("--ids", type=int, default=40)
    parser.add_argument("--crops", choices=("aligned", "misaligned"), default="aligned",
                        help="SynthPedes crops, both seeds")
    parser.add_argument("--out", default="benchmarks/results_pixel_phrase_maps.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    exp = reid_explain.explainify(zoo.load("clip-synthpedes"))
    result: dict[str, Any] = {"command": "python benchmarks/probe_pixel_phrase_maps.py "
                              f"--val-seed {args.val_seed} --test-seed {args.test_seed} "
                              f"--ids {args.ids} --crops {args.crops}"}
    chosen: dict[str, Any] = {}
    for role, seed in (("validation", args.val_seed), ("test", args.test_seed)):
        data = load(exp, seed, args.ids, args.crops)
        pids = np.unique(data.image_pids)
        build, scored = identity_subset(data, pids[0::2]), identity_subset(data, pids[1::2])
        maps = candidates(exp, scored)
        size = tuple(data.images.shape[-2:])  # the prior's "grid" is every pixel
        if role == "validation":
            chosen["prior"] = choose_phrase_reference(data, size, powers=POWERS)["powers"]
            chosen["methods"] = {name: max(POWERS, key=lambda p: score_phrase_maps(
                scored, sharpened(m, p))["energy"]) for name, m in maps.items()}
            result["chosen"] = chosen
        reference = score_phrase_maps(scored, prior_phrase_maps(build, scored, size,
                                                                power=chosen["prior"]))
        rows = {"pixel prior (per-part power)": brief(reference)}
        for name, m in maps.items():
            power = chosen["methods"][name]
            scores = score_phrase_maps(scored, sharpened(m, power))
            verdict = phrase_verdict(scores, reference)
            rows[f"{name} ^{power}"] = {
                **brief(scores), "minus_reference": [verdict["diff"], verdict["diff_low"],
                                                     verdict["diff_high"]],
                "beats": verdict["beaten"], "parts_beaten": f"{verdict['parts_beaten']} of "
                                                            f"{verdict['parts']}"}
        result[role] = {"seed": seed, "captions": len(scored), "rows": rows}
        print(role, seed, flush=True)
        for name, row in rows.items():
            print(f"  {name:28s} energy {row['energy']:.3f} pointing {row['pointing']:.3f} "
                  f"{row.get('minus_reference', '')} {row.get('parts_beaten', '')} "
                  f"{row['by_part']}", flush=True)
    result["seconds"] = round(time.perf_counter() - start, 1)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1, allow_nan=False)


if __name__ == "__main__":
    main()
