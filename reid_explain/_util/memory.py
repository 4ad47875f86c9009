"""Giving freed memory back to the operating system between internal batches, or keeping it.

glibc's allocator raises its mmap threshold as large blocks are freed, after which the
activations of each internal batch come from the heap and stay mapped when freed: the process's
RSS then grows with the number of batches although each batch frees what it used (measured:
+120 MB between 32 and 256 gallery images on osnet_x1_0, none of it held by a tensor).
``malloc_trim(0)`` after every internal batch keeps the peak that of one batch (measured: +539
/ +575 MB at 32 / 256 gallery images against +458 MB for one batch's no-grad forward; +536 /
+772 MB without; trimming every 4th batch or only when the peak rose was not enough). The next
batch then faults its pages in again, which cost the demo 15 % of its time on a 2-core VM, so
it is asked for (``release_memory=True``), not the default. Elsewhere (macOS, musl) it does
nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable
from functools import cache


@cache
def _libc(function: str, *argtypes: type) -> Callable[..., int] | None:
    """A glibc allocator function (returning int), or None where there is none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        found = getattr(ctypes.CDLL(name), function)
    except (OSError, AttributeError):
        return None
    found.argtypes, found.restype = list(argtypes), ctypes.c_int
    return found


def release_freed_memory() -> None:
    """Return the heap's free pages to the OS (glibc ``malloc_trim``), where there is one."""
    trim = _libc("malloc_trim", ctypes.c_size_t)
    if trim is not None:
        trim(0)


#: glibc ``mallopt`` parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Serve every block from the heap and keep freed pages mapped for reuse (glibc).

    By default glibc maps each block above its mmap threshold (at most 32 MB) afresh and
    unmaps it when freed, so every batched forward whose activations exceed it faults all of
    their pages in again: osnet_x1_0 at 256x128 took 59-84 ms per image in batches of 32-64
    against 25 ms with this policy (measured on a 2-core VM; page faults cost most where the
    kernel tracks memory access, as here). The price is that the process keeps its peak heap
    mapped (RSS stays near the high-water mark: 2.2 vs 1.8 GB in that measurement), as
    PyTorch's GPU caching allocator does for device memory. :func:`release_freed_memory` still
    returns the free pages on request.

    Not the default: a library should not change its host process's allocator, and at small
    inputs (the demo's 128x64) it gained nothing (68 vs 75 s). Call it once at start-up, run
    the command line with ``REID_EXPLAIN_MALLOC=keep``, or preload jemalloc / tcmalloc as
    PyTorch's CPU tuning guide advises. Returns whether the policy was set (not glibc: False).
    """
    mallopt = _libc("mallopt", ctypes.c_int, ctypes.c_int)
    if mallopt is None:
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, -1))
