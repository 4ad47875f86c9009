"""How the cost of ``evaluate`` grows with the gallery (1k, 4k, 16k images), and what the
gallery feature cache saves (issue 17, docs/scaling.md).

The host is the zoo's ``osnet-synthpedes`` (OSNet x0.25) at 128x64. The gallery is a dataset
that renders each image on demand (a fixed random image per index, so memory does not grow with
the gallery and reading an image costs what decoding a small JPEG costs); identities are spread
over the gallery so that every query has valid true matches on another camera. 32 queries are
explained with Grad-CAM and scored with counterfactual masking (whose retrieval figures rank
every masked query against the whole gallery), with the random-map baseline, in one process.

For each gallery size, in a fresh process: a run that embeds the gallery and stores its
features (``feature_cache``), then the same run again, which loads them (as a run of another
method or metric would). Printed per size: seconds per stage (``info["timing"]``), total, peak
RSS, and the second run's total as a ratio of the first's. Growth is also given as a ratio
against the smallest gallery of the same invocation.

    python benchmarks/bench_scaling.py [--sizes 1000 4000 16000] [--queries 32] [--json PATH]
                                       [--docs docs/scaling.md]

``--docs`` writes the measured table into that file, between its ``scaling-table`` markers.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

SIZE = (128, 64)
HERE = Path(__file__).resolve().parent


class RenderedImages(torch.utils.data.Dataset):
    """``n`` images, each a fixed random image of its index (normalised, (3, H, W))."""

    def __init__(self, n: int, offset: int) -> None:
        self.n, self.offset = n, offset

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.offset + int(i))
        return torch.randn(3, *SIZE, generator=g)


def eval_set(n_gallery: int, n_queries: int):
    from reid_explain.evaluation.protocol import ReidEvalSet

    rng = np.random.default_rng(0)
    n_ids = max(n_queries, n_gallery // 8)
    gallery_pids = rng.integers(0, n_ids, n_gallery)
    gallery_pids[:n_queries] = np.arange(n_queries)  # each query identity is in the gallery
    return ReidEvalSet(query=RenderedImages(n_queries, 10_000_000),
                       query_pids=np.arange(n_queries), query_camids=np.zeros(n_queries, int),
                       gallery=RenderedImages(n_gallery, 0), gallery_pids=gallery_pids,
                       gallery_camids=np.ones(n_gallery, int), name=f"rendered-{n_gallery}")


def one_size(n_gallery: int, n_queries: int, cache: str) -> dict:
    """Both runs at one gallery size (called in a fresh process)."""
    from reid_explain import explainify, zoo

    torch.manual_seed(0)
    data = eval_set(n_gallery, n_queries)
    out = {"gallery": n_gallery, "queries": n_queries}
    with explainify(zoo.load("osnet-synthpedes")) as exp:
        exp.embed(torch.zeros(2, 3, *SIZE))  # kernels built before the clock starts
        for run in ("first", "cached"):
            start = time.perf_counter()
            result = exp.evaluate(data, method="gradcam", metrics=["counterfactual_masking"],
                                  batch_size=16,
                                  progress=False, feature_cache=cache)
            out[run] = dict(result.info["timing"], wall_s=time.perf_counter() - start)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 4000, 16000])
    parser.add_argument("--queries", type=int, default=32)
    parser.add_argument("--json", default=None)
    parser.add_argument("--docs", default=None)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        print(json.dumps(one_size(args.one, args.queries, args.cache)))
        return
    rows = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as cache:
            run = subprocess.run([sys.executable, __file__, "--one", str(n), "--queries",
                                  str(args.queries), "--cache", cache],
                                 capture_output=True, text=True, check=True)
        row = json.loads(run.stdout.strip().splitlines()[-1])
        first, cached = row["first"], row["cached"]
        print(f"gallery {n:6d}: first run {first['wall_s']:6.1f} s (embed {first['embed_s']:.1f}"
              f", load {first['load_s']:.1f}, explain {first['explain_s']:.1f}, metrics "
              f"{first['metrics_s']:.1f}); with stored features {cached['wall_s']:.1f} s "
              f"({cached['wall_s'] / first['wall_s']:.2f}x); peak RSS "
              f"{row['peak_rss_mb']:.0f} MB", flush=True)
        rows.append(row)
    base = rows[0]["first"]["wall_s"]
    for row in rows:
        row["ratio_to_smallest"] = row["first"]["wall_s"] / base
    figures = {"machine": f"{platform.platform()}, {platform.machine()}, "
                          f"{torch.get_num_threads()} threads; torch {torch.__version__}",
               "device": "cpu", "rows": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, allow_nan=False))
    if args.docs:
        write_table(Path(args.docs), figures)


BEGIN, END = "<!-- scaling-table:begin -->", "<!-- scaling-table:end -->"


def write_table(path: Path, figures: dict) -> None:
    """The measured rows as a Markdown table between the markers of ``path``."""
    shown = path.resolve().relative_to(HERE.parent) if path.resolve().is_relative_to(
        HERE.parent) else path
    lines = [BEGIN, "", f"Measured by `python benchmarks/bench_scaling.py --docs {shown}` on "
             f"{figures['machine']} ({figures['device']}, one process), "
             f"{time.strftime('%Y-%m-%d')}.", "",
             "| gallery | first run | embed | load | explain | metrics | vs smallest | "
             "with stored features | peak RSS |", "|---|---|---|---|---|---|---|---|---|"]
    for row in figures["rows"]:
        first, cached = row["first"], row["cached"]
        lines.append(f"| {row['gallery']:,} | {first['wall_s']:.1f} s | {first['embed_s']:.1f} s"
                     f" | {first['load_s']:.1f} s | {first['explain_s']:.1f} s | "
                     f"{first['metrics_s']:.1f} s | {row['ratio_to_smallest']:.2f}x | "
                     f"{cached['wall_s']:.1f} s ({cached['wall_s'] / first['wall_s']:.2f}x) | "
                     f"{row['peak_rss_mb']:.0f} MB |")
    lines += ["", END]
    text = path.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: no {BEGIN} ... {END} markers to write between")
    head, rest = text.split(BEGIN, 1)
    path.write_text(head + "\n".join(lines) + rest.split(END, 1)[1])


if __name__ == "__main__":
    main()
