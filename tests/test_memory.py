"""Memory over time and at scale (issue 17, target 7), measured in fresh processes by the same
children ``benchmarks/bench_memory.py`` runs (see its docstring for how):

- 1,000 ``explain`` calls on one wrapped host (ViT-Tiny, 64x32, gradcam / rollout / attention
  relevance / occlusion in turn, after 20 warm-up calls of each) grow RSS by < 25 MB;
- chunked retrieval metrics peak < 1 GB above the features at a 50,000-image gallery. A full
  50k x 50k run takes minutes on 2 cores, so here the gallery is 50,000 and the queries fewer
  (2 and 6 chunks of 256 rows for image ReID, 1 and 3 for text): the peak must be the same at
  both query counts (within 128 MB, far less than the 0.5-1 GB an unchunked computation would
  add), i.e. independent of how many queries are scored, so it is the 50k x 50k peak too.
  The benchmark runs the full 50k x 50k and writes that figure to ``docs/performance.md``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

XDIST_COST_S = 85  # seconds on 2 cores: pytest-xdist starts the longest files first

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_memory.py"
GALLERY = 50_000

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(),
                                 reason="needs Linux /proc (VmRSS, VmHWM, clear_refs)")]


def _child(*args: object) -> dict:
    out = subprocess.run([sys.executable, str(BENCH), "--child", *map(str, args)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_thousand_explain_calls_grow_rss_less_than_25_mb():
    figures = _child("rss", "vit_tiny", 1000)
    assert figures["calls"] == 1000
    assert figures["growth_mb"] < 25, figures


@pytest.mark.parametrize("task,queries", [("image", (512, 1536)), ("text", (256, 768))])
def test_chunked_retrieval_peak_is_bounded_and_independent_of_query_count(task, queries):
    small, large = (_child("retrieval", task, n, GALLERY, 128, 256) for n in queries)
    for figures in (small, large):
        assert figures["peak_above_features_mb"] < 1024, figures
    # unchunked, the larger run would hold 100-200 MB more scores and 0.5-1 GB more ranking
    # temporaries; chunked, the peak is one chunk's, which varies by ~90 MB from run to run
    # with how the allocator reuses freed blocks (measured 276-362 MB at either query count)
    assert abs(large["peak_above_features_mb"] - small["peak_above_features_mb"]) < 128, \
        (small, large)


GRADCAM = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_gradcam.py"


def _gradcam_peak(mode: str, k: int) -> dict:
    """bench_gradcam.py's child: ``limit``, ``explain`` or ``explain-release``
    (``release_memory=True``): the RSS increase (``increase_mb``) and the increase of the bytes
    glibc's allocator holds (``held_mb``)."""
    out = subprocess.run([sys.executable, str(GRADCAM), "--child", mode, str(k)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


HAS_MALLINFO2 = hasattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), "mallinfo2")


@pytest.mark.skipif(not HAS_MALLINFO2, reason="needs glibc >= 2.33 (mallinfo2)")
def test_gradcam_peak_memory_is_one_internal_batch_whatever_k():
    """Issue 17, target 2: the peak memory increase of ``explain(query, gallery, top_k=k,
    release_memory=True)`` (osnet_x1_0, 256x128) stays within 1.5x a no-grad forward of one
    internal batch (the default: 8 images at 256x128) and does not grow with k (16 vs 64
    gallery images: 4 vs 16 internal batches of query-gallery rows; the benchmark measures
    k = 32, 128 and 256); each in a fresh process (bench_gradcam.py's child), after one call of
    the same kind has loaded what every call loads.

    Growth with k is read from the allocator's held bytes, which the kernel cannot lower: the
    peak RSS of a process slowed beside another pytest worker reads 15-40 % low (the VM's DAMON
    reclaims its pages before the peak), and in CI two RSS readings of the same kind of call
    came out 105 and 179 MB. Held bytes measured 92.5 MB for the limit and 99.8 / 100.2 MB at
    k = 32 / 128; unbatched, k = 64 would hold 16x one batch. The RSS bound stays, read in the
    direction reclaim cannot fake: the limit is the highest of a child before, one between and
    one after the explain children. Every child makes the same warm-up calls (an embedding and
    a small explain call) before the measured one, so that glibc's mmap threshold stands where
    the same history leaves it: with an embedding alone before it the limit read 102-151 MB by
    where it stood, and two CI runs failed at 102 against the explain children's 155 (stop 43;
    the same warm-up: 131-149 against 140-157)."""
    before = _gradcam_peak("limit", 0)
    small = _gradcam_peak("explain-release", 16)
    between = _gradcam_peak("limit", 0)
    large = _gradcam_peak("explain-release", 64)
    after = _gradcam_peak("limit", 0)
    held_limit = max(before["held_mb"], after["held_mb"])
    assert held_limit > 10, (before, after)  # the counter works (glibc): else nothing is read
    assert max(small["held_mb"], large["held_mb"]) <= 1.5 * held_limit, (small, large, after)
    assert large["held_mb"] - small["held_mb"] < 0.1 * held_limit, (small, large, after)
    # reclaim only lowers an RSS reading: the limit is the highest of three children (in CI,
    # stop 42, two limit children both read 102 MB, where alone they read 105-151 MB)
    rss_limit = max(before["increase_mb"], between["increase_mb"], after["increase_mb"])
    assert max(small["increase_mb"], large["increase_mb"]) <= 1.5 * rss_limit, \
        (small, large, rss_limit)


KEEP_CHILD = """
import ctypes, ctypes.util, json, sys
import torch
from reid_explain._util.memory import keep_freed_memory

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

mallinfo2 = ctypes.CDLL(ctypes.util.find_library("c")).mallinfo2
mallinfo2.restype = MallInfo2
if sys.argv[1] == "keep":
    assert keep_freed_memory()
x = torch.empty(16, 1024, 1024)  # 64 MB: above glibc's largest mmap threshold (32 MB)
mapped = mallinfo2().hblkhd
del x
print(json.dumps({"mapped_mb": mapped / 2**20, "free_in_heap_mb": mallinfo2().fordblks / 2**20}))
"""


@pytest.mark.skipif(not HAS_MALLINFO2, reason="needs glibc >= 2.33 (mallinfo2)")
@pytest.mark.parametrize("policy", ["system", "keep"])
def test_keep_freed_memory_serves_large_blocks_from_the_heap_and_keeps_them(policy):
    """glibc maps a 64 MB block on its own and unmaps it when freed (the next batch faults
    its pages in again); with keep_freed_memory() it comes from the heap, which keeps it for
    reuse (what made batched forwards 2-3x faster here, see reid_explain/_memory.py)."""
    out = subprocess.run([sys.executable, "-c", KEEP_CHILD, policy], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    if policy == "system":
        assert figures["mapped_mb"] >= 64 and figures["free_in_heap_mb"] < 32, figures
    else:
        assert figures["mapped_mb"] < 32 and figures["free_in_heap_mb"] >= 64, figures
