"""Memory over time and at scale (issue 17, target 7), each measured in a fresh process:

- **RSS growth of 1,000 explain calls**: a random-init host is wrapped once, warmed up with 20
  calls of each method (kernels, allocator pools and lazily imported modules settle), the
  resident set size (RSS) is read, then 1,000 ``exp.explain(query, gallery, method=m,
  top_k=2)`` calls run (1 query, 3 gallery images, the methods in turn) and RSS is read again
  after ``gc.collect()``. Target: growth < 25 MB. Hosts: timm ViT-Tiny (3 blocks, 64x32;
  ``gradcam``, ``rollout``, ``attention_relevance``, ``occlusion``) and, without ``--quick``,
  torchreid osnet_x0_25 (64x32; ``gradcam`` through a CNN's spatial layer).
- **Peak of chunked retrieval metrics**: random query/gallery features (128-d float32, seeded)
  and labels are made first, and one small call warms up; then the peak RSS is reset
  (``/proc/self/clear_refs``) and ``image_reid_metrics`` / ``text_image_metrics`` run with
  ``chunk_size`` query rows at a time. The figure is the peak RSS *above the process with its
  features already in memory* (the 50k x 128 features themselves, 2 x 25.6 MB, are not
  counted; a normalised copy of them made inside the call is). Target: < 1 GB at 50k x 50k.
  The default ``chunk_size=None`` scores all queries at once: the (Q, G) matrix alone is
  10 GB at 50k x 50k, so this figure needs an explicit chunk.

RSS is read from ``/proc/self/status`` (VmRSS; VmHWM for the peak). ``--json PATH`` writes the
figures for ``run_all.py``; ``--quick`` runs 200 calls and 1,000 x 10,000 retrieval.
``tests/test_memory.py`` runs the same children on smaller sizes.

    python benchmarks/bench_memory.py [--calls 1000] [--queries 50000 --gallery 50000]
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
HOSTS = {"vit_tiny": ("gradcam", "rollout", "attention_relevance", "occlusion"),
         "osnet_x0_25": ("gradcam",)}
SIZE = (64, 32)


def status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def reset_peak() -> None:
    """Make VmHWM (the peak RSS) start again from the current RSS."""
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")


def build(host: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if host == "vit_tiny":
        import timm

        return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                                 img_size=SIZE, depth=3).eval()
    import torchreid

    return torchreid.models.build_model("osnet_x0_25", num_classes=10, pretrained=False).eval()


def rss_growth(host: str, calls: int, warmup: int = 20) -> dict:
    """In this process: RSS before and after ``calls`` explain calls on ``host``."""
    from reid_explain import explainify

    torch.set_num_threads(1)
    methods = HOSTS[host]
    gen = torch.Generator().manual_seed(0)
    query, gallery = torch.randn(1, 3, *SIZE, generator=gen), torch.randn(3, 3, *SIZE,
                                                                           generator=gen)
    with explainify(build(host)) as exp:
        def call(i: int) -> None:
            method = methods[i % len(methods)]
            exp.explain(query, gallery, method=method, top_k=2)

        for i in range(warmup * len(methods)):
            call(i)
        gc.collect()
        before = status_kb("VmRSS")
        start = time.perf_counter()
        for i in range(calls):
            call(i)
        seconds = time.perf_counter() - start
        gc.collect()
        after = status_kb("VmRSS")
    return {"host": host, "methods": list(methods), "calls": calls,
            "rss_before_mb": before / 1024, "rss_after_mb": after / 1024,
            "growth_mb": (after - before) / 1024, "per_call_s": seconds / calls}


def retrieval_peak(task: str, queries: int, gallery: int, dim: int, chunk: int) -> dict:
    """In this process: peak RSS above the features of one chunked metrics call."""
    import numpy as np

    from reid_explain.evaluation.retrieval import image_reid_metrics, text_image_metrics

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    q = torch.randn(queries, dim, generator=gen)
    g = torch.randn(gallery, dim, generator=gen)
    per_id = 27 if task == "image" else 3  # Market-like / CUHK-PEDES-like identities
    n_ids = max(1, gallery // per_id)
    qp, gp = rng.integers(0, n_ids, queries), rng.integers(0, n_ids, gallery)
    qc, gc_ = rng.integers(0, 6, queries), rng.integers(0, 6, gallery)

    def run(n_q: int, n_g: int) -> dict:
        if task == "image":
            return image_reid_metrics(q[:n_q], g[:n_g], qp[:n_q], gp[:n_g], qc[:n_q],
                                      gc_[:n_g], chunk_size=chunk)
        return text_image_metrics(q[:n_q], g[:n_g], qp[:n_q], gp[:n_g], chunk_size=chunk)

    run(64, 512)  # warm-up: imports, kernels
    gc.collect()
    reset_peak()
    before = status_kb("VmRSS")
    start = time.perf_counter()
    result = run(queries, gallery)
    seconds = time.perf_counter() - start
    peak = status_kb("VmHWM")
    return {"task": task, "queries": queries, "gallery": gallery, "dim": dim, "chunk": chunk,
            "features_mb": (q.numel() + g.numel()) * 4 / 2**20,
            "full_matrix_mb": queries * gallery * 4 / 2**20,
            "peak_above_features_mb": (peak - before) / 1024, "seconds": seconds,
            "mAP": float(result["mAP"])}


def child(args: list[str]) -> dict:
    """Run one measurement in a fresh interpreter; its JSON figures."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", *args],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=None)
    parser.add_argument("--queries", type=int, default=None)
    parser.add_argument("--gallery", type=int, default=None)
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--hosts", nargs="+", default=None, choices=sorted(HOSTS))
    parser.add_argument("--tasks", nargs="+", default=["image", "text"],
                        choices=["image", "text"])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", nargs="+", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "rss":
            figures = rss_growth(rest[0], int(rest[1]))
        else:
            figures = retrieval_peak(rest[0], *(int(v) for v in rest[1:]))
        print(json.dumps(figures))
        return figures

    calls = args.calls or (200 if args.quick else 1000)
    queries = args.queries or (1000 if args.quick else 50000)
    gallery = args.gallery or (10000 if args.quick else 50000)
    hosts = args.hosts or (["vit_tiny"] if args.quick else sorted(HOSTS, reverse=True))
    figures: dict = {"rss": [], "retrieval": [],
                     "machine": {"cpu": platform.processor() or platform.machine(),
                                 "torch": torch.__version__}}

    def save() -> None:  # after each figure: a later one that fails keeps the earlier ones
        if args.json:
            Path(args.json).write_text(json.dumps(figures, indent=2, allow_nan=False))

    for host in hosts:
        row = child(["rss", host, str(calls)])
        figures["rss"].append(row)
        save()
        print(f"{host} ({', '.join(row['methods'])}): {calls} explain calls grew RSS by "
              f"{row['growth_mb']:+.1f} MB ({row['rss_before_mb']:.0f} -> "
              f"{row['rss_after_mb']:.0f} MB; target < 25 MB), {row['per_call_s'] * 1e3:.0f} ms "
              "per call", flush=True)
    for task in args.tasks:
        row = child(["retrieval", task, str(queries), str(gallery), str(args.dim),
                     str(args.chunk)])
        figures["retrieval"].append(row)
        save()
        print(f"{task} metrics {queries} x {gallery} x {args.dim}-d, chunks of {args.chunk}: "
              f"peak +{row['peak_above_features_mb']:.0f} MB above the features "
              f"({row['features_mb']:.0f} MB; the full matrix would be "
              f"{row['full_matrix_mb']:.0f} MB; target < 1024 MB), {row['seconds']:.0f} s",
              flush=True)
    return figures


if __name__ == "__main__":
    main()
