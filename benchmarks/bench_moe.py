"""Oracle-routed LoRA-MoE forward time against the host's own forward, same run.

Three copies of the same random-initialised timm ViT-Tiny (12 blocks, patch 16): the host, the
host with ``lora_moe`` (Market-1501 schema: 35 experts, rank 4, in the last 2 blocks, every sample
routed to its own experts by the oracle, experts made non-zero), and an identical copy of the host
(the A/A control: what two equal models measure apart on this machine). The oracle's attribute
codes are ``--codes synthpedes`` (default: the ground-truth Market-1501 attributes of 64
SynthPedes identities, seed ``--seed``: a bag or a hat only where the identity has one) or
``random`` (every attribute uniform over its states: half the presence attributes present).

Each round times host, MoE and control back to back, so that a slow spell of a shared machine
hits all three alike; the figure is the **median over rounds of the per-round ratio** MoE / host
(on this 2-core VM single forwards vary by +-15 % from round to round while the paired ratio of
two equal models stays within +-2 %). By default torch runs on one thread and the clock is the
thread's CPU time; ``--threads N`` measures N-thread wall time instead. Target: <= 1.10x at batch
64.

    python benchmarks/bench_moe.py [--height 128 --width 64 --batch 64 --repeats 21]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch


def _time(fn) -> tuple[float, float]:
    """(CPU seconds of this thread, wall seconds) of one call."""
    cpu, wall = time.thread_time(), time.perf_counter()
    fn()
    return time.thread_time() - cpu, time.perf_counter() - wall


def synthpedes_codes(schema, n: int, seed: int) -> torch.Tensor:
    """``(n, A)`` schema-ordered codes of ``n`` SynthPedes identities' Market-1501 attributes
    (the .mat convention: 1-based states, colours one yes(2)/no(1) field each)."""
    from reid_explain.synthpedes import make_identities, market_codes

    rows = []
    for identity in make_identities(n, seed):
        mat = market_codes(identity)
        row = []
        for attribute in schema:
            if attribute.one_field_per_class:
                on = [k for k, f in enumerate(attribute.fields) if mat[f] == 2]
                row.append(on[0] if len(on) == 1 else -1)
            else:
                code = mat[attribute.fields[0]]
                row.append(code - 1 if 1 <= code <= len(attribute.states) else -1)
        rows.append(row)
    return torch.tensor(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--depth", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--last-n", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the figures here (run_all.py)")
    parser.add_argument("--codes", choices=("synthpedes", "random"), default="synthpedes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--soft", action="store_true",
                        help="soft gates on every expert (the dense path) instead of the oracle's")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu_clock = args.threads == 1

    import timm

    from reid_explain.explain.explainer import choose_adapter
    from reid_explain.plugin_api.manager import get

    torch.manual_seed(0)
    host = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                             img_size=(args.height, args.width), depth=args.depth).eval()
    moe_host = copy.deepcopy(host)
    control = copy.deepcopy(host)
    host_adapter = choose_adapter(host)(host)
    control_adapter = choose_adapter(control)(control)
    adapter = choose_adapter(moe_host)(moe_host)
    moe = get("backbone_modifications", "lora_moe").obj(adapter, rank=args.rank,
                                                         last_n=args.last_n).apply()
    with torch.no_grad():
        for p in moe.parameters():
            p.normal_(0.0, 0.02)
    if args.codes == "random":
        codes = torch.stack([torch.randint(0, len(a.states), (args.batch,))
                             for a in moe.layout.schema], dim=1)
    else:
        codes = synthpedes_codes(moe.layout.schema, args.batch, args.seed)
    gates = moe.layout.gates(codes)
    if args.soft:
        gates = torch.softmax(torch.randn_like(gates), dim=1)
    images = torch.randn(args.batch, 3, args.height, args.width)

    runs = {"host": host_adapter, "moe": adapter, "control": control_adapter}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    with torch.no_grad(), moe.route(gates=gates):
        for a in runs.values():  # warm-up
            a.embed_image(images)
        for _ in range(args.repeats):
            for name, a in runs.items():
                times[name].append(_time(lambda a=a: a.embed_image(images)))
    moe.remove()

    which = 0 if cpu_clock else 1
    clock = "thread CPU time" if cpu_clock else "wall time"
    t = {name: [x[which] for x in v] for name, v in times.items()}

    def per_round(name: str) -> list[float]:
        return sorted(a / b for a, b in zip(t[name], t["host"], strict=True))

    ratio, control_ratio = (statistics.median(per_round(n)) for n in ("moe", "control"))
    per_round_moe = per_round("moe")
    quartiles = (statistics.quantiles(per_round_moe, n=4) if len(per_round_moe) > 1
                 else per_round_moe * 3)
    ratio_min = min(t["moe"]) / min(t["host"])
    ratio_med = statistics.median(t["moe"]) / statistics.median(t["host"])
    print(f"lora_moe forward, ViT-Tiny depth {args.depth} at {args.height}x{args.width}, "
          f"batch {args.batch}, {moe.layout.num_experts} experts rank {args.rank} in the last "
          f"{args.last_n} blocks, {'soft gates (dense)' if args.soft else 'oracle routing'} "
          f"({args.codes} codes: {float((gates != 0).sum(1).float().mean()):.1f} experts per "
          f"sample), "
          f"{torch.get_num_threads()} thread(s), {clock}, {args.repeats} rounds")
    for name in runs:
        wall = [x[1] for x in times[name]]
        print(f"  {name:7s}  min {min(t[name]) * 1e3:8.1f} ms  median "
              f"{statistics.median(t[name]) * 1e3:8.1f} ms   (wall min {min(wall) * 1e3:8.1f} ms)")
    print(f"  ratio  {ratio:.3f}x (median of per-round ratios; quartiles {quartiles[0]:.3f}-"
          f"{quartiles[2]:.3f})  control {control_ratio:.3f}x  min/min {ratio_min:.3f}x  "
          f"target <= 1.10x: {'met' if ratio <= 1.10 else 'NOT met'}")
    if args.json:
        import json

        with open(args.json, "w") as fh:
            json.dump({"benchmark": "moe", "batch": args.batch, "clock": clock,
                       "codes": args.codes, "rounds": args.repeats,
                       "experts_per_sample": float((gates != 0).sum(1).float().mean()),
                       "threads": torch.get_num_threads(),
                       "host_s": statistics.median(t["host"]),
                       "moe_s": statistics.median(t["moe"]), "ratio": ratio,
                       "ratio_q1": quartiles[0], "ratio_q3": quartiles[2],
                       "control_ratio": control_ratio, "ratio_min": ratio_min,
                       "ratio_median": ratio_med}, fh, indent=2, allow_nan=False)


if __name__ == "__main__":
    main()
