"""The attribute study's rankings against causal reliance on the zoo OSNet (issue 28).

For each SynthPedes seed (identities the zoo never saw): the causal audit re-renders every query
of the first ``--ids`` test identities with each attribute changed
(``reid_explain.attributes.causal``); the observational study (``run_study``) ranks the same
attributes from the same queries' AP and rank-1 hits, and pairwise reliance
(``attributes.pair_reliance``) from the same queries' and gallery's embeddings; each ranking
(consensus, pairwise reliance, then every response x method of the study) gets Spearman rho and
top-3 agreement with the causal ranking.

    python benchmarks/bench_causal_audit.py --seeds 301 302 303 304 --ids 150 --markdown \
        --out benchmarks/results_causal_audit.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import torch


def attribute_table(config: dict[str, Any], pids: list[int]) -> pd.DataFrame:
    """The identities' Market-1501 attributes in the tidy layout ``run_study`` reads."""
    from reid_explain.synthpedes.planning import SynthConfig, plan

    synth = plan(SynthConfig(**config))
    rows = [("test", pid, name, value) for pid in pids
            for name, value in synth.identity_by_pid[pid].attributes]
    table = pd.DataFrame(rows, columns=["split", "pid", "attribute", "value"])
    table.attrs["schema"] = "market1501"
    return table


def distractor_pair_reliance(exp: Any, config: dict[str, Any], ids: int) -> Any:
    """``pair_reliance`` on the audit's own unchanged queries and gallery (the first ``ids``
    test identities)."""
    from reid_explain.attributes.pair_reliance import pair_reliance
    from reid_explain.core.inputs import normalised_images
    from reid_explain.synthpedes.planning import SynthConfig, plan, render_sample

    synth = plan(SynthConfig(**config))
    keep = set(sorted(synth.test_pids)[:ids])
    feats, pids = {}, {}
    for split in ("query", "gallery"):
        specs = [s for s in synth.samples if s.split == split and s.pid in keep]
        images = [render_sample(synth, s, with_captions=False).rendered.image for s in specs]
        feats[split] = torch.cat([exp.embed(normalised_images(images[i:i + 128],
                                                              exp.adapter.pixel_mean,
                                                              exp.adapter.pixel_std))
                                  for i in range(0, len(images), 128)])
        pids[split] = [s.pid for s in specs]
    table = attribute_table(config, sorted(keep))
    return pair_reliance(feats["query"], feats["gallery"], pids["query"], pids["gallery"],
                         table)


def run_seed(exp: Any, seed: int, ids: int, trees: int) -> dict[str, Any]:
    from reid_explain.attributes import run_study
    from reid_explain.attributes.causal import agreement, causal_audit
    from reid_explain.zoo.registry import ZOO_DATA

    config = dict(ZOO_DATA) | {"seed": seed}
    start = time.perf_counter()
    audit = causal_audit(exp.embed, config, mean=exp.adapter.pixel_mean,
                         std=exp.adapter.pixel_std, max_ids=ids)
    audit_seconds = time.perf_counter() - start
    first = audit.per_query[audit.per_query.attribute == audit.ranking[0]]
    outcomes = first[["query", "pid", "ap", "hit"]].reset_index(drop=True)
    attributes = attribute_table(config, sorted(outcomes["pid"].unique().tolist()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = run_study(outcomes, attributes, hit="hit", n_estimators=trees)
    rankings = {"consensus": study.order}
    pairs = distractor_pair_reliance(exp, config, ids)
    rankings["pair_reliance"] = pairs.ranking
    for column in study.ranking.columns:
        if "." in column:  # "<response>.<method>" ranks
            rankings[column] = list(study.ranking.sort_values(column, kind="stable")["attribute"])
    agreements = {name: agreement(audit.ranking, order) for name, order in rankings.items()}
    print(f"seed {seed}: causal {audit.ranking}", flush=True)
    for name, a in agreements.items():
        print(f"  {name:24s} rho {a['spearman']:+.2f} top-3 {a['top3_shared']}/3", flush=True)
    return {"seed": seed, "ids": ids, "queries": len(outcomes), "causal": audit.to_json(),
            "study_ranking": study.order, "rankings": rankings, "agreement": agreements,
            "seconds": {"audit": round(audit_seconds, 1),
                        "total": round(time.perf_counter() - start, 1)}}


def markdown(runs: list[dict[str, Any]]) -> str:
    lines = ["| seed | causal reliance (AP drop [95% CI]), most first | study consensus | "
             "Spearman ρ | top-3 shared |", "|---|---|---|---|---|"]
    for run in runs:
        causal = ", ".join(f"{r['attribute']} {r['ap_drop']:.2f} [{r['ap_drop_low']:.2f}, "
                           f"{r['ap_drop_high']:.2f}]" for r in run["causal"]["attributes"])
        a = run["agreement"]["consensus"]
        lines.append(f"| {run['seed']} | {causal} | {', '.join(run['study_ranking'])} | "
                     f"{a['spearman']:.2f} | {a['top3_shared']}/3 |")
    lines += ["", "| seed | ranking | Spearman ρ | top-3 shared |", "|---|---|---|---|"]
    for run in runs:
        for name, a in run["agreement"].items():
            lines.append(f"| {run['seed']} | {name} | {a['spearman']:.2f} | "
                         f"{a['top3_shared']}/3 |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[301, 302])
    parser.add_argument("--ids", type=int, default=150)
    parser.add_argument("--trees", type=int, default=100)
    parser.add_argument("--out", default=None)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    from reid_explain import explainify, zoo

    torch.manual_seed(0)
    with explainify(zoo.load("osnet-synthpedes")) as exp:
        runs = [run_seed(exp, seed, args.ids, args.trees) for seed in args.seeds]
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1, allow_nan=False))
    if args.markdown:
        print(markdown(runs))


if __name__ == "__main__":
    main()
