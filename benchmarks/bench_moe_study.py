"""Planted importance on SynthPedes: does the MoE attribute study recover the planted order?

For each planted order and seed: export SynthPedes (400 identities x 6 images, 64x32,
independent attributes), train oracle-routed LoRA experts on a random-initialised, frozen 2-block
ViT-Tiny (12 epochs), measure per-query AP / hit / ΔAP per expert group on query/gallery, run
the attribute study, and print Spearman ρ and the top-3 overlap with the planted order for the
study's consensus (the ablation consensus) and, beside it, the AP/hit consensus. One torch
thread. Acceptance (issue 7, point 2): ρ >= 0.8 and the same top 3.

    python benchmarks/bench_moe_study.py                      # 2 orders x seeds 0, 1
    python benchmarks/bench_moe_study.py --seeds 0 --orders default
    python benchmarks/bench_moe_study.py --orders "upper_color,hat,gender,backpack,age,..."
    python benchmarks/bench_moe_study.py --orders default --seeds 701 702 \
        --host zoo:clip-synthpedes --router --causal [--ablation-routing learned]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

SECOND_ORDER = ("lower_color,bag,age,hair,upper_color,hat,clothes,gender,handbag,sleeve,"
                "backpack,lower_length")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--orders", nargs="+", default=["default", SECOND_ORDER],
                   help="'default' or comma lists of attributes, most important first")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--n-ids", type=int, default=400)
    p.add_argument("--host", default="random",
                   help="'random' (frozen random ViT-Tiny) or 'zoo:NAME' (a trained zoo CLIP's "
                        "image tower, e.g. zoo:clip-synthpedes)")
    p.add_argument("--router", nargs="?", const="features", default=None,
                   choices=["features", "pixels"],
                   help="also train a learned router (on the host's features, or a pixel CNN "
                        "fit first) and report its gap to the oracle")
    p.add_argument("--router-epochs", type=int, default=30,
                   help="epochs of the pixel router's own fit")
    p.add_argument("--router-seeds", nargs="*", type=int, default=[],
                   help="SynthPedes seeds whose people the pixel router also learns from "
                        "(--router-ids each; never a --seeds value)")
    p.add_argument("--router-ids", type=int, default=1500)
    p.add_argument("--ablation-routing", default="oracle", choices=["oracle", "learned"],
                   help="route the ablation by the labels (oracle) or the router's predictions")
    p.add_argument("--causal", action="store_true",
                   help="also audit the trained model's causal reliance (re-rendered queries, "
                        "routed as the ablation is) and the host's alone, and measure the "
                        "ablation rankings against it")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (1: two runs side by side on 2 cores)")
    p.add_argument("--json", default=None, help="also write every run's summary here")
    args = p.parse_args()

    from reid_explain.moe.planted import planted_order_study

    runs = []
    print(f"{'order':<8} {'seed':>4} {'rho':>6} {'top3':>4} {'sep':>5} | {'AP/hit rho':>10} "
          f"{'top3':>4} | {'mAP':>5} {'secs':>5}")  # sep: separated pairs in the wrong order
    for i, order in enumerate(args.orders):
        for seed in args.seeds:
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = planted_order_study(None if order == "default" else order.split(","),
                                             seed, epochs=args.epochs, n_ids=args.n_ids,
                                             threads=args.threads, host=args.host,
                                             router=args.router or False,
                                             router_epochs=args.router_epochs,
                                             router_seeds=args.router_seeds,
                                             router_ids=args.router_ids,
                                             ablation_routing=args.ablation_routing,
                                             causal=args.causal)
            seconds = time.perf_counter() - start
            resp = result.other["responses"]
            name = "default" if order == "default" else f"order{i}"
            wrong, pairs = result.summary()["separated_wrong"]
            print(f"{name:<8} {seed:>4} {result.rho:>6.3f} {result.top3:>4} "
                  f"{f'{wrong}/{pairs}':>5} | {resp['rho']:>10.3f} {resp['top3']:>4} | "
                  f"{result.metrics['oracle_mAP']:>5.3f} {seconds:>5.0f}", flush=True)
            if "learned:hard_mAP" in result.metrics:
                m = result.metrics
                print(f"         mAP oracle {m['oracle_mAP']:.3f} learned hard "
                      f"{m['learned:hard_mAP']:.3f} soft {m['learned:soft_mAP']:.3f} no experts "
                      f"{m['none_mAP']:.3f}", flush=True)
                for routing in ("oracle", "learned:hard", "learned:soft"):
                    if f"{routing}_gain_over_host" in m:
                        gain, low, high = m[f"{routing}_gain_over_host"]
                        print(f"         AP gain over the host, {routing}: {gain:+.3f} "
                              f"[{low:+.3f}, {high:+.3f}]", flush=True)
            print(f"         planted {result.planted_order}\n         found   {result.order}",
                  flush=True)
            if result.causal is not None:
                for who in ("model", "host"):
                    rows = result.causal[who]["attributes"]
                    print(f"         causal ({who}): " + ", ".join(
                        f"{r['attribute']} {r['ap_drop']:.3f}" for r in rows), flush=True)
                for name, a in result.causal["agreement"].items():
                    print(f"         {name:<20} vs causal: rho {a['spearman']:+.3f} "
                          f"top-3 {a['top3_shared']}/3", flush=True)
            runs.append({**result.summary(), "total_seconds": round(seconds, 1)})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(runs, fh, indent=1, allow_nan=False)


if __name__ == "__main__":
    main()
