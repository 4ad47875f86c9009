"""Attention rollout and attention relevance on a ViT host, one query against k gallery images:
time of ``exp.explain(query, gallery, method=m, top_k=k)`` for ``m`` in ``rollout`` and
``attention_relevance`` (the names ``reid-explain plugins`` lists) against baselines measured in
the same run on the same images (timm ``vit_small_patch16_224``, random init, 224x224).

Baselines (each figure printed as a ratio):

- **limit**: one no-grad forward of the same 1 + k images (``exp.embed`` in its default
  batches, the host's own fused attention); target <= 2x for rollout (issue 17, target 5),
  reported for attention relevance;
- **gradient floor** (attention relevance only): one forward of the 1 + k images with the
  attention graph kept, and two backward passes of all of them to every block's attention. A
  pair's relevance needs the gradient of that pair's own score, so the 2k maps of k pairs on
  both sides need 2k backward rows beside the 1 + k forward rows; this is the least an exact
  method can cost (more than 2x the limit whenever a backward row costs more than half a
  forward row), so attention relevance's target is <= 1.25x this floor (target 5 restated,
  docs/attributions.md);
- **equality**: the largest difference of the maps from the straightforward computation (each
  pair's image run through the host on its own row, ``attribute`` without ``image_index``).

Timings are the median of ``--repeats`` runs, interleaved (limit, methods, floor, then again),
after a warm-up of each at the same shapes. ``--json PATH`` writes the figures for
``run_all.py``; ``--quick``: k = 8, 2 repeats.

    python benchmarks/bench_vit.py [--k 32] [--repeats 3] [--threads 2] [--quick]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

SIZE = (224, 224)
METHODS = ("rollout", "attention_relevance")


def build(seed: int = 0):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def gradient_floor(exp, query: torch.Tensor, gallery: torch.Tensor,
                   parts: list[tuple[float, float]] | None = None) -> None:
    """The 1 + k images forward once with the attention graph, then two backward passes of all
    of them to every block's attention (one per side explained). ``parts`` gets the seconds of
    the forward and of one backward pass."""
    inputs = torch.cat([query, gallery]).requires_grad_(True)
    with exp.guard:
        for param in exp.model.parameters():  # as the methods run: no parameter gradients
            param.requires_grad_(False)
        start = time.perf_counter()
        with torch.enable_grad(), exp.adapter.capture_attention() as capture:
            score = exp.adapter.embed_image(inputs).sum()
        forward = time.perf_counter()
        for last in (False, True):
            torch.autograd.grad(score, capture.tensors, retain_graph=not last)
    if parts is not None:
        parts.append((forward - start, (time.perf_counter() - forward) / 2))


def max_diff_to_rows_alone(exp, method: str, query: torch.Tensor, gallery: torch.Tensor,
                           result) -> float:
    """Largest |difference| of the maps from each pair's image on its own row."""
    from reid_explain.plugin_api.targets import CosineSimilarity

    qi, gi = result.pairs[:, 0], result.pairs[:, 1]
    q_emb, g_emb = exp.embed(query), exp.embed(gallery)
    alone_q = exp.attribute(query[qi], CosineSimilarity(g_emb[gi]), method=method)
    alone_g = exp.attribute(gallery[gi], CosineSimilarity(q_emb[qi]), method=method)
    return max(float((result.query.maps - alone_q).abs().max()),
               float((result.gallery.maps - alone_g).abs().max()))


def measure(k: int, repeats: int) -> dict:
    from reid_explain import explainify

    model = build()
    query, gallery = images(1, 1), images(k, 2)
    runs: dict[str, Callable[[], object]] = {}
    with explainify(model) as exp:
        runs["limit"] = lambda: (exp.embed(query), exp.embed(gallery))
        for method in METHODS:
            runs[method] = lambda m=method: exp.explain(query, gallery, method=m, top_k=k)
        parts: list[tuple[float, float]] = []
        runs["floor"] = lambda: gradient_floor(exp, query, gallery, parts)
        for fn in runs.values():  # warm-up at these shapes
            fn()
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(repeats):
            for name, fn in runs.items():
                times[name].append(timed(fn))
        median = {name: statistics.median(t) for name, t in times.items()}
        figures: dict = {"k": k, "limit_s": median["limit"], "floor_s": median["floor"],
                         "floor_forward_s": statistics.median(p[0] for p in parts[1:]),
                         "floor_backward_s": statistics.median(p[1] for p in parts[1:]),
                         "times": times, "methods": {}}
        for method in METHODS:
            result = exp.explain(query, gallery, method=method, top_k=k)
            figures["methods"][method] = {
                "s": median[method], "ratio_to_limit": median[method] / median["limit"],
                "max_abs_diff": max_diff_to_rows_alone(exp, method, query, gallery, result),
                "map_scale": float(torch.cat([result.query.maps, result.gallery.maps])
                                   .abs().max())}
        relevance = figures["methods"]["attention_relevance"]
        relevance["ratio_to_floor"] = relevance["s"] / median["floor"]
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    k = args.k or (8 if args.quick else 32)
    figures = measure(k, args.repeats or (2 if args.quick else 3))
    for method, f in figures["methods"].items():
        print(f"k={k} {method}: {f['s']:.2f} s = {f['ratio_to_limit']:.2f}x one no-grad forward "
              f"of the 1 + k images ({figures['limit_s']:.2f} s); maps differ "
              f"from each pair alone by <= {f['max_abs_diff']:.1e} (scale "
              f"{f['map_scale']:.1e})", flush=True)
    relevance = figures["methods"]["attention_relevance"]
    print(f"      attention_relevance = {relevance['ratio_to_floor']:.2f}x the gradient floor "
          f"({figures['floor_s']:.2f} s: 1 + k images forward, two backward passes; target "
          "<= 1.25x); rollout's target: <= 2x the no-grad forward")
    print(f"      floor = forward with the attention graph {figures['floor_forward_s']:.2f} s + "
          f"2 x one backward pass {figures['floor_backward_s']:.2f} s "
          f"({figures['floor_backward_s'] / figures['limit_s']:.2f}x the no-grad forward)")
    if args.json:
        figures["machine"] = {"cpu": platform.processor() or platform.machine(),
                              "threads": torch.get_num_threads(), "torch": torch.__version__,
                              "model": "vit_small_patch16_224 (timm, random init)"}
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2, allow_nan=False)
    return figures


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
