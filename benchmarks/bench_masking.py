"""Deletion / insertion / counterfactual masking: the metrics' batched masked copies against
re-embedding one masked image at a time, measured in the same run on the same pairs
(issue 17, target 4: >= 3x faster, identical AUCs to 1e-6).

The host is osnet_x0_25 from torchreid (random init; ``--model zoo`` loads the zoo's
``osnet-synthpedes``) at 256x128. ``--pairs`` query/gallery pairs of random images are explained
with Grad-CAM, then scored with

- ``deletion`` and ``insertion`` over ``--steps`` fractions from 0 to 1 (both sides of each
  pair: pairs x 2 x steps masked images per curve),
- ``counterfactual_masking`` (k = 0.2, 5 random cell sets: pairs x 8 masked images),

each through ``explainer.score`` (masked copies batched over steps and pairs, 64 per host
forward) and through the loop a user would write: for each image and step, mask it and
``explainer.embed`` it alone. Both use the same masker (mean fill) and the same cell sets, so the
values must agree; the largest difference is printed. Timings are the minimum of ``--repeats``
runs after a warm-up at the same shapes, batched and loop runs alternating.

    python benchmarks/bench_masking.py [--pairs 8] [--steps 16] [--repeats 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import replace

import torch
import torch.nn.functional as F

SIZE = (256, 128)
TARGET = 3.0


def build(which: str):
    if which == "zoo":
        from reid_explain import zoo

        return zoo.load("osnet-synthpedes")
    import torchreid

    torch.manual_seed(0)
    return torchreid.models.build_model("osnet_x0_25", num_classes=10, pretrained=False).eval()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def compare(batched: Callable[[], object], loop: Callable[[], object],
            repeats: int) -> tuple[float, float, object, object]:
    """Minimum times of both after a warm-up of each, alternating them (a shared machine's
    load then weighs on both alike)."""
    out_batched, out_loop = batched(), loop()  # warm-up at these shapes
    t_batched, t_loop = [], []
    for _ in range(repeats):
        t, out_batched = timed(batched)
        t_batched.append(t)
        t, out_loop = timed(loop)
        t_loop.append(t)
    return min(t_batched), min(t_loop), out_batched, out_loop


def curve_loop(exp, masker, grounding, fractions, most_relevant_first, reveal):
    """Deletion/insertion AUCs the plain way: one host forward per masked image."""
    from reid_explain.plugins.metrics.perturbation_curves import step_masks, trapezoid_auc

    masks = step_masks(grounding.on_grid(), fractions, most_relevant_first, reveal)
    refs = F.normalize(grounding.references.float(), dim=-1)
    curves = torch.empty(masks.shape[:2])
    for s in range(masks.shape[0]):
        for i in range(masks.shape[1]):
            emb = exp.embed(masker(grounding.images[i:i + 1], masks[s, i:i + 1])).cpu()
            curves[s, i] = (emb[0] * refs[i]).sum()
    return trapezoid_auc(fractions, curves)


def counterfactual_loop(exp, masker, grounding, k, n_random, seed):
    """Counterfactual drops the plain way: the metric's cell sets, one forward per image."""
    from reid_explain.plugins.metrics.counterfactual import (
        cell_count,
        random_cell_masks,
        ranked_cell_masks,
    )

    grid = grounding.on_grid()
    n, h, w = grid.shape
    count = cell_count(k, h * w)
    generator = torch.Generator().manual_seed(seed)
    masks = torch.stack([torch.zeros(n, h, w, dtype=torch.bool),
                         ranked_cell_masks(grid, count, highest=True),
                         *[random_cell_masks(n, (h, w), count, generator)
                           for _ in range(n_random)],
                         ranked_cell_masks(grid, count, highest=False)])
    refs = F.normalize(grounding.references.float(), dim=-1)
    sims = torch.empty(masks.shape[:2])
    for v in range(masks.shape[0]):
        for i in range(n):
            emb = exp.embed(masker(grounding.images[i:i + 1], masks[v, i:i + 1])).cpu()
            sims[v, i] = (emb[0] * refs[i]).sum()
    drops = sims[:1] - sims[1:]
    return drops[0] - drops[1:1 + n_random].mean(dim=0)  # the gap


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--model", choices=["osnet_x0_25", "zoo"], default="osnet_x0_25")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from reid_explain import explainify
    from reid_explain.plugin_api import manager as plugin_manager

    generator = torch.Generator().manual_seed(1)
    query = torch.randn(args.pairs, 3, *SIZE, generator=generator)
    gallery = torch.randn(args.pairs, 3, *SIZE, generator=generator)
    fractions = torch.linspace(0, 1, args.steps, dtype=torch.float64)
    steps = fractions.tolist()
    k, n_random, seed = 0.2, 5, 0
    masker = plugin_manager.get("maskers", "mean").obj()
    figures: dict[str, dict[str, float]] = {}
    with explainify(build(args.model)) as exp:
        expl = exp.explain(query, gallery, method="gradcam",
                           pairs=[(i, i) for i in range(args.pairs)])
        # Grad-CAM of a random-init host can be flat; random maps give a real cell order
        maps = torch.rand(expl.query.on_grid().shape, generator=generator)
        expl = replace(expl, method="bench", query=replace(expl.query, maps=maps),
                       gallery=replace(expl.gallery, maps=maps.flip(0)))
        runs = {
            "deletion": (
                lambda: exp.score(expl, ["deletion"], deletion={"steps": steps, "curve": False}),
                lambda: {f"deletion.{s}_auc": curve_loop(exp, masker, getattr(expl, s),
                                                         fractions, True, False)
                         for s in ("query", "gallery")},
                2 * args.pairs * args.steps),
            "insertion": (
                lambda: exp.score(expl, ["insertion"], insertion={"steps": steps,
                                                                  "curve": False}),
                lambda: {f"insertion.{s}_auc": curve_loop(exp, masker, getattr(expl, s),
                                                          fractions, True, True)
                         for s in ("query", "gallery")},
                2 * args.pairs * args.steps),
            "counterfactual_masking": (
                lambda: {"counterfactual_masking.gap": exp.score(
                    expl, ["counterfactual_masking"],
                    counterfactual_masking={"k": k, "n_random": n_random, "seed": seed}
                )["counterfactual_masking.gap"]},
                lambda: {"counterfactual_masking.gap": counterfactual_loop(
                    exp, masker, expl.query, k, n_random, seed)},
                args.pairs * (n_random + 3)),
        }
        total_batched = total_loop = 0.0
        worst = 0.0
        for name, (batched, loop, rows) in runs.items():
            t_batched, t_loop, out_batched, out_loop = compare(batched, loop, args.repeats)
            diff = max(float((out_batched[key].double() - out_loop[key].double()).abs().max())
                       for key in out_loop)
            worst = max(worst, diff)
            total_batched += t_batched
            total_loop += t_loop
            figures[name] = {"masked_images": rows, "batched_s": t_batched, "loop_s": t_loop,
                             "speedup": t_loop / t_batched, "max_abs_diff": diff}
            print(f"{name:24s} {rows:4d} masked images: batched {t_batched:7.2f} s, "
                  f"one at a time {t_loop:7.2f} s -> {t_loop / t_batched:5.2f}x "
                  f"(target >= {TARGET:g}x), max |diff| {diff:.1e}", flush=True)
    overall = total_loop / total_batched
    print(f"{'all three':24s} batched {total_batched:.2f} s vs one at a time {total_loop:.2f} s "
          f"-> {overall:.2f}x; AUCs/gaps agree to {worst:.1e} (target 1e-6)")
    figures["all"] = {"batched_s": total_batched, "loop_s": total_loop, "speedup": overall,
                      "max_abs_diff": worst}
    if args.json:
        record = {"benchmark": "masking", "model": args.model, "image_size": list(SIZE),
                  "pairs": args.pairs, "steps": args.steps, "threads": torch.get_num_threads(),
                  "machine": platform.platform(), "processor": platform.processor(),
                  "figures": figures}
        with open(args.json, "w") as fh:
            json.dump(record, fh, indent=2, allow_nan=False)
    return 0 if worst <= 1e-6 else 1


if __name__ == "__main__":
    sys.exit(main())
