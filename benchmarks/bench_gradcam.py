"""Similarity Grad-CAM, one query against k gallery images: time and peak memory of
``exp.explain(query, gallery, method="gradcam", top_k=k)`` against baselines measured in the
same run on the same images (osnet_x1_0 from torchreid, random init, 256x128).

Baselines (each figure printed as a ratio):

- **limit**: one no-grad forward of the same 1 + k images (``exp.embed``); target <= 1.5x;
- **per-pair Captum**: a ``LayerGradCam`` call per pair and side (2k calls); target >= 2x faster;
- **pytorch-grad-cam** (``pip install grad-cam``, optional): its ``GradCAM`` on the same 2k rows
  with a cosine target; target >= 1x; maps must agree (correlation >= 0.999);
- **memory**: peak RSS increase of the call, each in a fresh process, against a no-grad forward
  of one internal batch (the default: 8 images at 256x128) in a process that made the same
  warm-up calls; target <= 1.5x, whatever k.

Timings are the minimum of ``--repeats`` runs after a warm-up at the same shapes (oneDNN builds
kernels per shape on first use). ``--json PATH`` writes the figures for ``run_all.py``.

    python benchmarks/bench_gradcam.py [--k 32 256] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import functools
import importlib.util
import json
import platform
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

SIZE = (256, 128)


def build(seed: int = 0):
    import torchreid

    torch.manual_seed(seed)
    return torchreid.models.build_model("osnet_x1_0", num_classes=10, pretrained=False).eval()


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up at these shapes
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def captum_per_pair(model, query, gallery, q_emb, g_emb) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop a user would write: one LayerGradCam call per pair and side."""
    from captum.attr import LayerGradCam

    def forward(x, ref):
        return F.cosine_similarity(model(x), ref)

    cam = LayerGradCam(forward, model.conv5)
    q_maps, g_maps = [], []
    for j in range(len(gallery)):
        q_maps.append(cam.attribute(query, additional_forward_args=(g_emb[j:j + 1],),
                                    relu_attributions=True)[:, 0].detach())
        g_maps.append(cam.attribute(gallery[j:j + 1], additional_forward_args=(q_emb,),
                                    relu_attributions=True)[:, 0].detach())
    return torch.cat(q_maps), torch.cat(g_maps)


def grad_cam_library(model, query, gallery, q_emb, g_emb) -> torch.Tensor | None:
    """pytorch-grad-cam's GradCAM on the same 2k rows with a cosine target, if installed."""
    try:
        from pytorch_grad_cam import GradCAM
    except ImportError:
        return None
    from reid_explain.core.engine import default_internal_batch_size

    class Cosine:
        def __init__(self, reference):
            self.reference = reference

        def __call__(self, output):
            return F.cosine_similarity(output[None], self.reference[None])[0]

    k = len(gallery)
    inputs = torch.cat([query.expand(k, -1, -1, -1), gallery])
    targets = [Cosine(g_emb[j]) for j in range(k)] + [Cosine(q_emb[0]) for _ in range(k)]
    maps = []
    step = default_internal_batch_size(inputs)  # the rows per pass reid_explain uses
    with GradCAM(model=model, target_layers=[model.conv5]) as cam:
        # in batches: all 2k rows at once keep the whole network's graph for every row
        # (k = 256 at 256x128 exhausts 24 GB)
        for start in range(0, len(inputs), step):
            maps.append(torch.as_tensor(cam(input_tensor=inputs[start:start + step],
                                            targets=targets[start:start + step])))
    return torch.cat(maps)  # upsampled to the image and min-max scaled, as the library does


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def measure_time(k: int, repeats: int) -> dict:
    from reid_explain import explainify
    from reid_explain.core.engine import default_internal_batch_size

    model = build()
    query, gallery = images(1, 1), images(k, 2)
    rows: dict = {"k": k, "internal_batch_rows": default_internal_batch_size(query)}
    with explainify(model) as exp:
        q_emb, g_emb = exp.embed(query), exp.embed(gallery)
        limit = best_time(lambda: (exp.embed(query), exp.embed(gallery)), repeats)
        ours = best_time(lambda: exp.explain(query, gallery, method="gradcam", top_k=k), repeats)
        result = exp.explain(query, gallery, method="gradcam", top_k=k)
    order = result.pairs[:, 1]
    loop = best_time(lambda: captum_per_pair(model, query, gallery, q_emb, g_emb), 1)
    q_ref, g_ref = captum_per_pair(model, query, gallery[order], q_emb, g_emb[order])
    rows.update(limit_s=limit, ours_s=ours, captum_loop_s=loop,
                ratio_to_limit=ours / limit, speedup_vs_captum_loop=loop / ours,
                corr_vs_captum=min(correlation(result.query.maps, q_ref),
                                   correlation(result.gallery.maps, g_ref)))
    if importlib.util.find_spec("pytorch_grad_cam") is not None:
        lib = best_time(lambda: grad_cam_library(model, query, gallery, q_emb, g_emb), 1)
        rows.update(grad_cam_s=lib, speedup_vs_grad_cam=lib / ours)
    return rows


class _HeldPeak(TorchDispatchMode):
    """The peak of the bytes glibc's allocator holds for the process (in use on its heap plus
    its own mappings: ``mallinfo2``), read after every tensor operation, forward and backward.

    Unlike the RSS high-water mark, the allocator's count cannot be lowered by the kernel
    reclaiming pages of a slowed process (beside another pytest worker a peak-RSS reading came
    out 15-40 % low, which made two readings of the same call differ by 70 MB); it misses only
    the temporaries freed inside one operation, which every mode shares."""

    def __init__(self) -> None:
        super().__init__()
        self.start = self.peak = _held_bytes()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.peak = max(self.peak, _held_bytes())
        return out

    @property
    def increase_mb(self) -> float:
        return (self.peak - self.start) / 2**20


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


@functools.cache
def _mallinfo2() -> Callable[[], _MallInfo2] | None:
    found = getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2", None)
    if found is not None:
        found.restype = _MallInfo2
    return found


def _held_bytes() -> int:
    """Bytes in use on glibc's heap plus its mmapped blocks (0 where there is no mallinfo2)."""
    mallinfo2 = _mallinfo2()
    if mallinfo2 is None:
        return 0
    info = mallinfo2()
    return info.uordblks + info.hblkhd


def _peak_child(mode: str, k: int) -> None:
    """In a fresh process: the RSS increase (MB) of one call (``limit``: a no-grad forward of
    one internal batch of the default size; ``explain``: the Grad-CAM call with k gallery
    images), and the increase of the allocator's held bytes (``held_mb``, :class:`_HeldPeak`)."""
    from reid_explain import explainify
    from reid_explain.core.engine import default_internal_batch_size

    model = build()
    query, gallery = images(1, 1), images(k, 2)
    with explainify(model) as exp:
        # every child, the limit's too, first makes the same calls: what each call loads is
        # loaded, and glibc's mmap threshold (raised as large blocks are freed) is where the
        # same history leaves it, so that only the measured call differs. With an embedding
        # alone before it, the limit's reading swung 102-151 MB by where the threshold stood
        # (a CI run read 102 against the explain children's 155)
        exp.embed(images(2, 3))
        exp.explain(images(1, 5), images(1, 6), method="gradcam")
        batch = images(default_internal_batch_size(query), 4)
        before = _status_kb("VmRSS")
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets the peak (VmHWM) to the current RSS
        with _HeldPeak() as held:
            if mode == "limit":
                exp.embed(batch, batch_size=len(batch))
            else:
                exp.explain(query, gallery, method="gradcam", top_k=k,
                            release_memory=mode == "explain-release")
        peak = _status_kb("VmHWM")
    print(json.dumps({"increase_mb": (peak - before) / 1024, "held_mb": held.increase_mb}))


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field))


def measure_memory(k: int, mode: str = "explain") -> float:
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(k)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["increase_mb"]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[32, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    parser.add_argument("--keep-freed-memory", action="store_true",
                        help="time under reid_explain's keep_freed_memory() heap policy (what "
                             "the command line uses); the memory rows are then left out")
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        _peak_child(args.child[0], int(args.child[1]))
        return []
    if args.keep_freed_memory:
        from reid_explain._util.memory import keep_freed_memory

        if not keep_freed_memory():
            parser.error("--keep-freed-memory needs glibc")
    else:
        out = subprocess.run([sys.executable, __file__, "--child", "limit", "0"],
                             capture_output=True, text=True, check=True)
        limit_mb = json.loads(out.stdout.strip().splitlines()[-1])["increase_mb"]
    results = []
    for k in args.k:
        row = measure_time(k, args.repeats)
        row["keep_freed_memory"] = args.keep_freed_memory
        results.append(row)
        if not args.keep_freed_memory:
            row.update(limit_peak_mb=limit_mb, peak_mb=measure_memory(k))
            row["memory_ratio"] = row["peak_mb"] / limit_mb
            row["peak_release_mb"] = measure_memory(k, "explain-release")
            row["memory_ratio_release"] = row["peak_release_mb"] / limit_mb
        print(f"k={k}: explain {row['ours_s']:.2f} s = {row['ratio_to_limit']:.2f}x the no-grad "
              f"forward of the same images ({row['limit_s']:.2f} s; target <= 1.5x); "
              f"{row['speedup_vs_captum_loop']:.1f}x faster than a per-pair Captum loop "
              f"({row['captum_loop_s']:.2f} s; target >= 2x), maps corr "
              f"{row['corr_vs_captum']:.4f}", flush=True)
        if "grad_cam_s" in row:
            print(f"      {row['speedup_vs_grad_cam']:.2f}x pytorch-grad-cam "
                  f"({row['grad_cam_s']:.2f} s; target >= 1x)")
        if "peak_mb" in row:
            print(f"      peak memory +{row['peak_mb']:.0f} MB = {row['memory_ratio']:.2f}x a "
                  f"no-grad forward of one internal batch (+{limit_mb:.0f} MB; target <= 1.5x)",
                  flush=True)
        if args.json:  # after each k: a later k that fails keeps the earlier figures
            machine = {"cpu": platform.processor() or platform.machine(),
                       "threads": torch.get_num_threads(), "torch": torch.__version__}
            with open(args.json, "w") as f:
                json.dump({"machine": machine, "rows": results}, f, indent=2, allow_nan=False)
    return results


if __name__ == "__main__":
    main()
