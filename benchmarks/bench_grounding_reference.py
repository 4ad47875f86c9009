"""Image maps of the zoo OSNet against the strongest image-blind reference (issue 25).

For each SynthPedes seed (identities the zoo never saw) and each crop condition (aligned,
misaligned): the validation identities choose everything (the reference: location prior or
centred Gaussian at its best power; each method's ``sharpen`` power, by person energy on
validation pairs), then the test identities are scored once with ``evaluate``: person energy,
pointing, top-region IoU and the counterfactual gap, each beside random maps and the reference,
with paired 95% CIs (``result.comparison``). Energy is reported both as the method produces it
and at its validation-chosen power, since the reference's power is chosen the same way.

    python benchmarks/bench_grounding_reference.py --seeds 201 202 203 --markdown \
        --out benchmarks/results_grounding_reference.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

METHODS = ("gradcam", "guided_gradcam", "layercam", "integrated_gradients", "occlusion")
OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 16, "internal_batch_size": 64},
    "occlusion": {"perturbations_per_eval": 32}}
POWERS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)
METRICS = ("energy_pointing_game", "pointing_game", "mask_iou", "counterfactual_masking")
FIGURES = (("energy_pointing_game", "person_energy", "energy"),
           ("pointing_game", "person_pointing", "pointing"),
           ("mask_iou", "person_iou", "iou"), ("counterfactual_masking", "gap", "gap"))


def figures(result: Any) -> dict[str, Any]:
    from reid_explain.report.image_section import figure_records

    return figure_records(result.comparison, FIGURES)


def run_condition(exp: Any, seed: int, crops: str, n_test: int, n_val: int,
                  queries: int, methods: tuple[str, ...] = METHODS,
                  score: str = "centred") -> dict[str, Any]:
    from reid_explain.studies.demo import image_eval_set
    from reid_explain.zoo.data import render_splits
    from reid_explain.zoo.registry import ZOO_DATA

    config = dict(ZOO_DATA) | {"seed": seed, "crops": crops}
    splits = render_splits(config, with_masks=True, max_ids={"val": n_val, "test": n_test},
                           splits=("val", "test"))
    mean, std = exp.adapter.pixel_mean, exp.adapter.pixel_std
    val = image_eval_set(splits["val"], mean, std)
    test = image_eval_set(splits["test"], mean, std, reference_split=splits["val"])
    out: dict[str, Any] = {"seed": seed, "crops": crops, "score": score,
                           "reference": test.reference.to_json(), "methods": {}}
    for method in methods:
        start = time.perf_counter()
        chosen = exp.choose_sharpen(val, method, powers=POWERS, max_queries=queries,
                                    method_options=OPTIONS.get(method), score=score).to_json()
        result = exp.evaluate(test, method=method, metrics=list(METRICS),
                              max_queries=queries, progress=False, score=score,
                              method_options=OPTIONS.get(method))
        sharp = exp.evaluate(test, method=method, metrics=["energy_pointing_game"],
                             max_queries=queries, progress=False, score=score,
                             method_options=OPTIONS.get(method, {}) | {
                                 "sharpen": chosen["power"]})
        record = figures(result)
        record["energy_sharpened"] = figures(sharp)["energy"]
        out["methods"][method] = {"figures": record, "sharpen": chosen,
                                  "seconds": round(time.perf_counter() - start, 1)}
        print(f"seed {seed} {crops:10s} {method:22s} " + "  ".join(
            f"{k} {v['method']:.3f} (ref {v['reference']:.3f}: {v['reference_beaten']})"
            for k, v in record.items()), flush=True)
    return out


def _cell(f: dict[str, Any]) -> str:
    mark = {True: "yes", False: "no"}.get(f["reference_beaten"], "undetermined")
    low, high = f["reference_diff_low"] * 100, f["reference_diff_high"] * 100
    return f"{f['method']:.3f} ({f['reference_diff'] * 100:+.1f} [{low:+.1f}, {high:+.1f}]; {mark})"


def markdown(runs: list[dict[str, Any]]) -> str:
    lines = ["| seed | crops | reference (val) | method | energy (− ref, pts [95% CI]; beats) "
             "| energy at val power p | pointing | IoU | counterfactual gap |",
             "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        ref = run["reference"]["name"]
        for method, r in run["methods"].items():
            f = r["figures"]
            lines.append(f"| {run['seed']} | {run['crops']} | {ref} | {method} | "
                         f"{_cell(f['energy'])} | {_cell(f['energy_sharpened'])}, "
                         f"p={r['sharpen']['power']:g} | {_cell(f['pointing'])} | "
                         f"{_cell(f['iou'])} | {_cell(f['gap'])} |")
        e = next(iter(run["methods"].values()))["figures"]
        lines.append(f"| {run['seed']} | {run['crops']} | {ref} | *reference itself* | "
                     f"{e['energy']['reference']:.3f} | — | {e['pointing']['reference']:.3f} | "
                     f"{e['iou']['reference']:.3f} | {e['gap']['reference']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[201])
    parser.add_argument("--crops", nargs="+", default=["aligned", "misaligned"])
    parser.add_argument("--test-ids", type=int, default=60)
    parser.add_argument("--val-ids", type=int, default=40)
    parser.add_argument("--queries", type=int, default=80)
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--score", choices=("centred", "cosine"), default="centred",
                        help="the pair score explained (evaluate's score=)")
    parser.add_argument("--layer", default=None,
                        help="the host's spatial layer for every method (explainify's layer=)")
    parser.add_argument("--gradcam-min-rows", type=int, default=None,
                        help="Grad-CAM's min_rows (0: the last map, as before stop 42)")
    parser.add_argument("--out", default=None)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()
    if args.gradcam_min_rows is not None:
        OPTIONS["gradcam"] = {"min_rows": args.gradcam_min_rows}

    from reid_explain import explainify, zoo

    torch.manual_seed(0)
    runs = []
    with explainify(zoo.load("osnet-synthpedes"), layer=args.layer) as exp:
        for seed in args.seeds:
            for crops in args.crops:
                runs.append(run_condition(exp, seed, crops, args.test_ids, args.val_ids,
                                          args.queries, tuple(args.methods), args.score))
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1, allow_nan=False))
    if args.markdown:
        print(markdown(runs))


if __name__ == "__main__":
    main()
