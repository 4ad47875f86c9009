"""Phrase maps of the zoo CLIP against the per-part image-blind reference (issue 25).

For each SynthPedes seed (identities the zoo never saw) and crop condition: the per-part
location prior, each part's power and (``--resolutions grid pixels``, the default, as the
report) whether the part is drawn on the patch grid or at pixels are chosen on 40 validation
identities (``choose_phrase_reference``), then every caption of the test identities (up to
``--captions``) is scored once: each phrase map's energy on the part its phrase names, beside
the reference's map of the same phrase, paired difference with its 95 % bootstrap CI
(``phrase_verdict``) and the parts beaten.

    python benchmarks/bench_phrase_reference.py --seeds 779 780 781 --crops aligned misaligned \
        --out benchmarks/results_phrase_reference.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

METHODS = ("attention_relevance", "dense_similarity", "similarity", "relevance_ig")


def run_condition(exp: Any, seed: int, crops: str, n_test: int, n_val: int, captions: int,
                  methods: tuple[str, ...] = METHODS,
                  resolutions: tuple[str, ...] = ("grid", "pixels")) -> dict[str, Any]:
    from reid_explain.evaluation.phrase_grounding import (
        choose_phrase_reference,
        phrase_grounding_scores,
        phrase_verdict,
        prior_phrase_maps,
        score_phrase_maps,
    )
    from reid_explain.zoo.data import render_splits, text_image_data
    from reid_explain.zoo.registry import ZOO_DATA

    config = dict(ZOO_DATA) | {"seed": seed, "crops": crops}
    splits = render_splits(config, with_masks=True, max_ids={"val": n_val, "test": n_test},
                           splits=("val", "test"))
    mean, std = exp.adapter.pixel_mean, exp.adapter.pixel_std
    test = text_image_data(splits["test"], mean, std)
    validation = text_image_data(splits["val"], mean, std)
    grid = exp.adapter.grid_size(tuple(test.images.shape[-2:]))
    size = tuple(test.images.shape[-2:])
    chosen = choose_phrase_reference(validation, grid, resolutions=[
        {"grid": grid, "pixels": size}[r] for r in resolutions])
    reference = score_phrase_maps(test, prior_phrase_maps(chosen["build"], test, grid, captions,
                                                          chosen["powers"], chosen["grids"]))
    out: dict[str, Any] = {"seed": seed, "crops": crops, "captions": min(captions, len(test)),
                           "reference": {"powers": chosen["powers"],
                                         "grids": {p: f"{h}x{w}" for p, (h, w) in
                                                   chosen["grids"].items()},
                                         "energy": reference["energy"],
                                         "by_part": {p: v["energy"] for p, v in
                                                     reference["by_part"].items()}},
                           "methods": {}}
    for method in methods:
        start = time.perf_counter()
        scores = phrase_grounding_scores(exp, test, method, max_captions=captions)
        verdict = phrase_verdict(scores, reference, seed=seed)
        out["methods"][method] = {
            "energy": scores["energy"], "pointing": scores["pointing"],
            "by_part": {p: v["energy"] for p, v in scores["by_part"].items()},
            "verdict": {k: v for k, v in verdict.items() if not isinstance(v, dict)},
            "parts_beaten": sorted(p for p, v in verdict["by_part"].items()
                                   if v["beaten"] is True),
            "seconds": round(time.perf_counter() - start, 1)}
        v = verdict
        print(f"seed {seed} {crops:10s} {method:20s} energy {scores['energy']:.3f} "
              f"(reference {reference['energy']:.3f}): {100 * v['diff']:+.1f} "
              f"[{100 * v['diff_low']:+.1f}, {100 * v['diff_high']:+.1f}] points, parts "
              f"beaten {v['parts_beaten']}/{v['parts']}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[779])
    parser.add_argument("--crops", nargs="+", default=["aligned", "misaligned"])
    parser.add_argument("--test-ids", type=int, default=60)
    parser.add_argument("--val-ids", type=int, default=40)
    parser.add_argument("--captions", type=int, default=320)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--resolutions", nargs="+", choices=("grid", "pixels"),
                        default=["grid", "pixels"],
                        help="where the reference may draw each part (chosen on validation)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from reid_explain import explainify, zoo

    torch.manual_seed(0)
    runs = []
    with explainify(zoo.load("clip-synthpedes")) as exp:
        for seed in args.seeds:
            for crops in args.crops:
                runs.append(run_condition(exp, seed, crops, args.test_ids, args.val_ids,
                                          args.captions, tuple(args.methods),
                                          tuple(args.resolutions)))
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
