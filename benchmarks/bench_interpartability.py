"""InterPartAbility on SynthPedes: baseline vs +PPIM vs +PPIM+constraint, several seeds.

    python benchmarks/bench_interpartability.py --seeds 0 1 2 --epochs 15 --out results.json

For each seed and variant a tiny open_clip ViT is trained from scratch (IRRA's SDM objective,
plus the plugins), then measured on the test identities: text-to-image R@1 and mAP; pointing
game and energy pointing game of the phrase maps against the SynthPedes part masks, for the
PPIM head (variants with PPIM), the head-free phrase-patch similarity and the attribution
methods; and the counterfactual-masking gap (top-20% cells of the caption's phrase map vs
random cells). Printed per run and as means over seeds, each variant also as a ratio to the
baseline of the same seed.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from reid_explain import explainify
from reid_explain._util.io import atomic_write_text
from reid_explain.evaluation.phrase_grounding import (
    location_prior_scores,
    phrase_counterfactual_gap,
    phrase_grounding_scores,
)
from reid_explain.training.text_image import (
    TinyClipConfig,
    TrainConfig,
    retrieval_metrics,
    synthpedes_text_image,
    tiny_clip,
    train_text_image,
)

VARIANTS = {"baseline": (), "ppim": ("ppim",), "ppim+constraint": ("ppim", "attention_constraint")}
ATTRIBUTIONS = ("gradcam", "attention_relevance", "rollout")


def run(seed: int, variant: str, args: argparse.Namespace, splits: dict) -> dict:
    clip_config = TinyClipConfig(patch_size=args.patch_size)
    model = tiny_clip(clip_config, seed=seed)
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                         losses=VARIANTS[variant],
                         loss_options={"ppim": {"weight": args.ppim_weight,
                                                **json.loads(args.ppim_options)},
                                       "attention_constraint": {
                                           "weight": args.constraint_weight,
                                           **json.loads(args.constraint_options)}})
    start = time.perf_counter()
    history, session = train_text_image(model, splits["train"], config)
    seconds = time.perf_counter() - start
    test = splits["test"]
    result = {"seed": seed, "variant": variant, "train_seconds": round(seconds, 1),
              "steps": len(history), "final_loss": history[-1]["loss"],
              "retrieval": retrieval_metrics(model, test), "grounding": {}}
    ppim = session.losses.get("ppim") if session is not None else None
    methods = ("similarity", *ATTRIBUTIONS) + (("ppim",) if ppim is not None else ())
    with explainify(model) as exp:
        for method in methods:
            scores = phrase_grounding_scores(exp, test, method, ppim=ppim,
                                             max_captions=args.max_captions)
            result["grounding"][method] = {k: scores[k] for k in ("energy", "pointing",
                                                                  "phrases", "by_part")}
        best = max(methods, key=lambda m: result["grounding"][m]["energy"])
        result["best_method"] = best
        result["counterfactual"] = phrase_counterfactual_gap(
            exp, test, best, ppim=ppim, max_captions=args.max_captions, seed=seed)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--ids", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--patch-size", type=int, default=16)
    parser.add_argument("--ppim-weight", type=float, default=1.0)
    parser.add_argument("--constraint-weight", type=float, default=1.0)
    parser.add_argument("--ppim-options", default="{}",
                        help='more PPIM parameters as JSON, e.g. \'{"patch_block": 0}\'')
    parser.add_argument("--constraint-options", default="{}",
                        help='more attention-constraint parameters as JSON, e.g. '
                             '\'{"blocks": [0]}\'')
    parser.add_argument("--max-captions", type=int, default=400)
    parser.add_argument("--out", default=None, help="write all results as JSON")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results, priors = [], []
    grid = TinyClipConfig(patch_size=args.patch_size).grid_size
    for seed in args.seeds:
        splits = synthpedes_text_image(n_ids=args.ids, seed=seed)
        prior = location_prior_scores(splits["train"], splits["test"], grid,
                                      max_captions=args.max_captions)
        priors.append({"seed": seed, **{k: prior[k] for k in ("energy", "pointing", "phrases",
                                                               "by_part")}})
        print(f"seed {seed} reference: image-blind location prior (training masks, {grid[0]}x"
              f"{grid[1]} grid) energy {prior['energy']:.3f} pointing {prior['pointing']:.3f}",
              flush=True)
        for variant in args.variants:
            r = run(seed, variant, args, splits)
            results.append(r)
            g = r["grounding"]
            print(f"seed {seed} {variant:16s} R@1 {r['retrieval']['R1']:6.2f} "
                  f"mAP {r['retrieval']['mAP']:6.2f} | energy " +
                  " ".join(f"{m}={g[m]['energy']:.3f}" for m in g) +
                  f" | best {r['best_method']} gap {r['counterfactual']['gap']:.4f} "
                  f"| {r['train_seconds']}s", flush=True)
    print("\nmeans over seeds (ratio to baseline)")
    print(f"{'location prior':16s} (reference, no model) energy "
          f"{np.mean([p['energy'] for p in priors]):.3f} pointing "
          f"{np.mean([p['pointing'] for p in priors]):.3f}")
    base = [r for r in results if r["variant"] == "baseline"]
    for variant in args.variants:
        rows = [r for r in results if r["variant"] == variant]
        r1 = np.mean([r["retrieval"]["R1"] for r in rows])
        mean_ap = np.mean([r["retrieval"]["mAP"] for r in rows])
        energy = np.mean([r["grounding"][r["best_method"]]["energy"] for r in rows])
        pointing = np.mean([r["grounding"][r["best_method"]]["pointing"] for r in rows])
        gap = np.mean([r["counterfactual"]["gap"] for r in rows])
        line = (f"{variant:16s} R@1 {r1:6.2f} mAP {mean_ap:6.2f} best-method energy "
                f"{energy:.3f} pointing {pointing:.3f} gap {gap:.4f}")
        if base and variant != "baseline":
            b_r1 = np.mean([r["retrieval"]["R1"] for r in base])
            b_energy = np.mean([r["grounding"][r["best_method"]]["energy"] for r in base])
            line += (f" | R@1 {r1 - b_r1:+.2f} pts, energy {100 * (energy - b_energy):+.1f} "
                     f"pts ({energy / b_energy:.2f}x baseline)")
        print(line)
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(
            {"args": vars(args), "location_prior": priors,
             "results": [{k: v for k, v in r.items()} for r in results]},
            indent=2, default=float, allow_nan=False))


if __name__ == "__main__":
    main()
