"""Retrieval metrics from features: chunked against the full (Q, G) computation, same run.

Usage: ``python benchmarks/bench_retrieval.py [--queries 3000 --gallery 20000 --dim 512
--chunk 256]``. Each measurement runs in a fresh subprocess (same seeded data) so its peak
memory is its own: peak = the process's peak resident set size above its size just before the
metric call (Linux ``/proc/self/status``, with the peak reset through ``clear_refs``). Prints
``name: value (ratio x full)`` lines and whether the chunked results equal the full ones exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "2")


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _worker(task: str, chunk: int | None, nq: int, ng: int, dim: int) -> dict:
    import numpy as np
    import torch

    from reid_explain.evaluation.retrieval import image_reid_metrics, text_image_metrics

    torch.set_num_threads(2)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    q = torch.randn(nq, dim, generator=gen)
    g = torch.randn(ng, dim, generator=gen)
    if task == "image":  # Market-like: ~27 images per identity, 6 cameras
        n_ids = max(1, ng // 27)
        gp, qp = rng.integers(0, n_ids, ng), rng.integers(0, n_ids, nq)
        gc, qc = rng.integers(0, 6, ng), rng.integers(0, 6, nq)
    else:  # CUHK-PEDES-like: ~3 images per identity
        n_ids = max(1, ng // 3)
        gp, qp = rng.integers(0, n_ids, ng), rng.integers(0, n_ids, nq)
    # warm up kernels so that neither variant pays for first calls
    if task == "image":
        image_reid_metrics(q[:64], g[:512], qp[:64], gp[:512], qc[:64], gc[:512])
    else:
        text_image_metrics(q[:64], g[:512], qp[:64], gp[:512])
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak RSS counter
    except OSError:
        pass
    before = _status_kb("VmRSS")
    t = time.perf_counter()
    if task == "image":
        r = image_reid_metrics(q, g, qp, gp, qc, gc, chunk_size=chunk)
        key = {"mAP": r["mAP"], "mINP": r["mINP"], "cmc": r["cmc"].tolist()}
    else:
        r = text_image_metrics(q, g, qp, gp, chunk_size=chunk)
        key = {k: r[k] for k in ("R1", "R5", "R10", "mAP", "mINP")}
    seconds = time.perf_counter() - t
    peak_mb = (_status_kb("VmHWM") - before) / 1024
    return {"seconds": seconds, "peak_mb": peak_mb, "result": key}


def _run(task: str, chunk: int | None, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--worker", task, "--chunk", str(chunk or 0),
           "--queries", str(args.queries), "--gallery", str(args.gallery),
           "--dim", str(args.dim)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--queries", type=int, default=3000)
    p.add_argument("--gallery", type=int, default=20000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=256, help="query rows per chunk")
    p.add_argument("--worker", choices=["image", "text"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        res = _worker(args.worker, args.chunk or None, args.queries, args.gallery, args.dim)
        print(json.dumps(res))
        return 0

    full_mb = args.queries * args.gallery * 4 / 2**20
    print(f"{args.queries} queries x {args.gallery} gallery x {args.dim}-d, float32, "
          f"{os.environ['OMP_NUM_THREADS']} threads; the (Q, G) float32 matrix alone is "
          f"{full_mb:.0f} MB")
    all_equal = True
    for task in ("image", "text"):
        full = _run(task, None, args)
        chunked = _run(task, args.chunk, args)
        same = full["result"] == chunked["result"]
        all_equal &= same
        print(f"{task} full: {full['seconds']:.2f} s (1.00x full), "
              f"peak +{full['peak_mb']:.0f} MB (1.00x full)")
        print(f"{task} chunked ({args.chunk} rows): {chunked['seconds']:.2f} s "
              f"({chunked['seconds'] / full['seconds']:.2f}x full), "
              f"peak +{chunked['peak_mb']:.0f} MB "
              f"({chunked['peak_mb'] / max(full['peak_mb'], 1e-9):.3f}x full)")
        print(f"{task} chunked == full: {same}  "
              + ", ".join(f"{k}={v:.4f}" for k, v in full["result"].items() if k != "cmc"))
    return 0 if all_equal else 1


if __name__ == "__main__":
    raise SystemExit(main())
