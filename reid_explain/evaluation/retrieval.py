"""Retrieval metrics: image ReID (CMC, mAP, mINP) and text-to-image ReID (R@K, mAP, mINP).

Image ReID reproduces torchreid's ``evaluate_rank`` (Market-1501 protocol) number for number,
including its tie order: rows are ranked with ``np.argsort(distmat, axis=1)`` exactly as
torchreid does (numpy's default, *unstable* sort).
Text-to-image ReID follows IRRA (cosine of L2-normalised features, no camera filter,
percentages), with ties broken by gallery index.

Both work from features in chunks of query rows so that the full (Q, G) matrix is never held.
Chunked results are bit-identical to the full computation because (1) scores are always computed
by the same kernel on the same aligned block of ``_ROW_BLOCK`` query rows (BLAS results for a row
otherwise depend on how many rows are multiplied at once), and (2) every chunk is reduced to
per-query values (AP, rank of first/last true match, INP) by row-independent operations; the
summaries are then averaged once over all queries. See ``docs/metrics.md`` for the definitions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from .._util.memory import release_freed_memory
from ..errors import InputError

__all__ = [
    "image_reid_metrics",
    "from_distmat",
    "text_image_metrics",
    "from_similarity",
]

#: Query rows per score block. Every score is computed in a block of exactly this many rows
#: (zero-padded at the end), aligned to global row indices, so that chunking cannot change it.
_ROW_BLOCK = 64

ArrayLike = Any  # np.ndarray | Tensor | Sequence


# --------------------------------------------------------------------------- input checks


def _features(x: ArrayLike, name: str, dtype: torch.dtype) -> Tensor:
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    try:
        t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as e:
        raise InputError(f"{name} must be a (N, D) array or tensor of features: {e}") from e
    if t.dim() != 2:
        raise InputError(f"{name} must be 2-D (N, D) features, got shape {tuple(t.shape)}")
    if t.shape[0] == 0 or t.shape[1] == 0:
        raise InputError(f"{name} is empty (shape {tuple(t.shape)})")
    if not (t.is_floating_point() or t.dtype in (torch.int32, torch.int64)):
        raise InputError(f"{name} must hold numbers, got dtype {t.dtype}")
    t = t.detach().to(dtype)
    if not bool(torch.isfinite(t).all()):
        bad = int((~torch.isfinite(t)).any(dim=1).nonzero()[0])
        raise InputError(f"{name} has NaN or inf values (first in row {bad})")
    return t


def _labels(x: ArrayLike, name: str, n: int, of: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.ndim != 1:
        raise InputError(f"{name} must be 1-D, got shape {a.shape}")
    if len(a) != n:
        raise InputError(f"{name} has {len(a)} entries but there are {n} {of}")
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise InputError(f"{name} has NaN or inf values")
    return a


def _codes(q: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map labels of any type (ints, strings) to shared int32 codes (cheap to gather)."""
    try:
        _, inv = np.unique(np.concatenate([q, g]), return_inverse=True)
    except TypeError as e:
        raise InputError(f"query and gallery labels cannot be compared: {e}") from e
    inv = inv.reshape(-1).astype(np.int32)
    return inv[: len(q)], inv[len(q):]


#: scores held at once when ``chunk_size`` is None: about 2**23 (a 50k gallery: 128 query rows,
#: a few hundred MB with the ranking's temporaries), whatever the number of queries
AUTO_CHUNK_SCORES = 2**23


def _chunk(chunk_size: int | None, n: int, n_gallery: int) -> int:
    """Query rows per chunk: ``chunk_size``, or (None) as many whole 64-row blocks as keep
    about :data:`AUTO_CHUNK_SCORES` scores, at least one block. Never changes a result."""
    if chunk_size is None:
        blocks = max(1, AUTO_CHUNK_SCORES // (max(n_gallery, 1) * _ROW_BLOCK))
        return min(n, blocks * _ROW_BLOCK)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)):
        raise InputError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    if chunk_size < 1:
        raise InputError(f"chunk_size must be >= 1, got {chunk_size}")
    return min(int(chunk_size), n)


def _same_dim(q: Tensor, g: Tensor, qname: str, gname: str) -> None:
    if q.shape[1] != g.shape[1]:
        raise InputError(f"{qname} has dimension {q.shape[1]} but {gname} has {g.shape[1]}")


# --------------------------------------------------------------------------- score streams


def _score_chunks(
    q: Tensor, g: Tensor, kind: Literal["cosine", "euclidean", "similarity"], chunk: int
) -> Iterator[tuple[int, Tensor]]:
    """Yield ``(start, scores[start:start+chunk])`` of query rows against the whole gallery.

    Scores are computed block by block (``_ROW_BLOCK`` rows, aligned, padded) and copied into
    chunk buffers, so at most ``chunk + _ROW_BLOCK`` rows of scores exist at once.
    ``cosine`` and ``euclidean`` are torchreid's distances (1 - cos; squared L2), ``similarity``
    is the cosine similarity.
    """
    n = q.shape[0]
    if kind in ("cosine", "similarity"):
        q, g = F.normalize(q, p=2, dim=1), F.normalize(g, p=2, dim=1)
    else:
        qq, gg = q.pow(2).sum(dim=1), g.pow(2).sum(dim=1)
    gt = g.t()
    buf: Tensor | None = None
    size = filled = start = 0
    for b in range(0, n, _ROW_BLOCK):
        rows = min(_ROW_BLOCK, n - b)
        qb = q[b : b + rows]
        if rows < _ROW_BLOCK:
            qb = torch.cat([qb, qb.new_zeros(_ROW_BLOCK - rows, qb.shape[1])])
        if kind == "euclidean":
            qqb = qq[b : b + rows]
            if rows < _ROW_BLOCK:
                qqb = torch.cat([qqb, qqb.new_zeros(_ROW_BLOCK - rows)])
            s = torch.addmm(qqb[:, None] + gg[None, :], qb, gt, beta=1, alpha=-2)
        elif kind == "cosine":
            s = 1 - qb @ gt
        else:
            s = qb @ gt
        off = 0
        while off < rows:  # copy the block's rows into chunk buffers
            if buf is None:
                size, filled = min(chunk, n - start), 0
                buf = s.new_empty(size, s.shape[1])
            take = min(size - filled, rows - off)
            buf[filled : filled + take] = s[off : off + take]
            filled += take
            off += take
            if filled == size:
                yield start, buf
                start += size
                buf = None


# --------------------------------------------------------------------------- reductions


def _per_query(rows: np.ndarray, ranks: np.ndarray, n: int) -> dict[str, np.ndarray]:
    """Per-query AP, INP, first/last rank from the 1-based ranks of every true match.

    ``rows``/``ranks`` list the true matches row by row, ranks ascending within a row. Sums run
    in that order per row (``np.bincount``), so a row's AP never depends on its chunk.
    """
    n_pos = np.bincount(rows, minlength=n)
    starts = np.concatenate([[0], np.cumsum(n_pos)[:-1]])
    nth = np.arange(len(rows)) - starts[rows] + 1  # 1, 2, ... within a query
    ap_sum = np.bincount(rows, weights=nth / ranks, minlength=n)
    valid = n_pos > 0
    first = np.full(n, -1, dtype=np.int64)
    last = np.full(n, -1, dtype=np.int64)
    first[valid] = ranks[starts[valid]]
    last[valid] = ranks[starts[valid] + n_pos[valid] - 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(valid, ap_sum / n_pos, np.nan)
        inp = np.where(valid, n_pos / last, np.nan)
    return {"n_pos": n_pos, "valid": valid, "first_rank": first, "last_rank": last,
            "ap": ap, "inp": inp}


def _image_chunk(
    d: np.ndarray, qp: np.ndarray, qc: np.ndarray, gp: np.ndarray, gc: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rank one chunk of distance rows as torchreid does; return true-match ranks and junk counts.

    Junk = same pid and same camera as the query; it is removed from the ranking, so a true
    match's rank is its position minus the junk ranked before it.
    """
    # torchreid's call: numpy's default (unstable) kind, hence its tie order. (torch.sort on
    # tie-free rows gives the same order but was measured 2x slower than numpy here.)
    order = np.argsort(d, axis=1)
    match = gp[order] == qp[:, None]
    junk = match & (gc[order] == qc[:, None])
    good = match & ~junk
    width = d.shape[1]
    good_flat = np.flatnonzero(good)
    junk_flat = np.flatnonzero(junk)
    rows, cols = np.divmod(good_flat, width)
    junk_before = np.searchsorted(junk_flat, good_flat) - np.searchsorted(junk_flat, rows * width)
    return rows, cols + 1 - junk_before, junk.sum(axis=1)


def _text_chunk(s: Tensor, qcode: np.ndarray, gcode: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks of every positive image for each text query of the chunk.

    Ranking: higher similarity first, ties by lower image index (a stable sort). mAP and mINP
    need every positive's rank, so the whole row is sorted; a top-k would only give R@K.
    (Counting, per positive, the items ranked above it was measured slower than torch's sort
    even at 3 positives per query.)
    """
    idx = torch.sort(s, dim=1, descending=True, stable=True).indices
    match = gcode[idx] == torch.as_tensor(qcode, device=s.device)[:, None]
    rows, cols = match.nonzero(as_tuple=True)  # row-major: ranks ascend within a row
    return rows.cpu().numpy(), cols.cpu().numpy() + 1


def _merge(parts: list[tuple[int, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows = np.concatenate([start + r for start, r, _ in parts]).astype(np.int64)
    ranks = np.concatenate([k for _, _, k in parts]).astype(np.int64)
    return rows, ranks


def _skipped_check(valid: np.ndarray, what: str) -> None:
    if not valid.any():
        raise InputError(f"no query has a true match in the gallery ({what}); nothing to score")


# --------------------------------------------------------------------------- image ReID


def _image_run(chunks: Iterator[tuple[int, Tensor | np.ndarray]], n: int, qpc: np.ndarray,
               qcc: np.ndarray, gpc: np.ndarray, gcc: np.ndarray,
               ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per-query results and junk counts of image ReID, chunk by chunk of distance rows."""
    parts, junk = [], []
    for start, d in chunks:
        sl = slice(start, start + d.shape[0])
        r, k, nj = _image_chunk(d.cpu().numpy() if isinstance(d, Tensor) else d, qpc[sl],
                                qcc[sl], gpc, gcc)
        parts.append((start, r, k))
        junk.append(nj)
        del d  # before the next chunk is made: one chunk of scores at a time
        # glibc can leave a freed chunk's temporaries resident when the small results kept in
        # `parts` land in their hole and the next chunk's temporaries extend the heap: at 50k x
        # 50k text metrics grew RSS ~12 MB a chunk to +2.7 GB in some processes (+0.3 GB in
        # others); trimming after each chunk (~2 % of the time) keeps it one chunk's
        release_freed_memory()
    rows, ranks = _merge(parts)
    return _per_query(rows, ranks, n), np.concatenate(junk)


def _image_summary(
    pq: dict[str, np.ndarray], n_junk: np.ndarray, q_pids: np.ndarray, q_camids: np.ndarray,
    n_gallery: int, max_rank: int, ks: Sequence[int], per_query: bool,
) -> dict[str, Any]:
    valid = pq["valid"]
    _skipped_check(valid, "q_pids vs g_pids, after removing same-pid same-camera gallery items")
    max_rank = min(max_rank, n_gallery)  # as torchreid
    n_valid = int(valid.sum())
    first = pq["first_rank"][valid]
    hits = np.bincount(np.minimum(first, max_rank + 1) - 1, minlength=max_rank + 1)[:max_rank]
    # torchreid: float32 0/1 rows summed (exact) then divided by the number of valid queries
    cmc = np.cumsum(hits).astype(np.float32) / np.float32(n_valid)
    out: dict[str, Any] = {
        "cmc": cmc,
        "mAP": float(np.mean(pq["ap"][valid])),
        "mINP": float(np.mean(pq["inp"][valid])),
        "num_queries": len(valid),
        "num_valid": n_valid,
        "num_skipped": int((~valid).sum()),
        "skipped": np.flatnonzero(~valid),
    }
    if per_query:
        out["per_query"] = _frame(pq, {"pid": q_pids, "camid": q_camids, "n_junk": n_junk}, ks)
    return out


def _frame(pq: dict[str, np.ndarray], extra: dict[str, np.ndarray], ks: Sequence[int]) -> Any:
    import pandas as pd

    cols: dict[str, Any] = {"query": np.arange(len(pq["valid"])), **extra}
    cols.update({k: pq[k] for k in ("valid", "n_pos", "first_rank", "last_rank", "ap", "inp")})
    for k in ks:
        cols[f"hit@{k}"] = pq["valid"] & (pq["first_rank"] <= k)
    return pd.DataFrame(cols)


def _image_args(
    q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike, nq: int,
    ng: int, qname: str, gname: str, max_rank: int, ks: Sequence[int],
) -> tuple[np.ndarray, ...]:
    """Check the labels; return raw query pids/camids and shared codes of pids and camids."""
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise InputError(f"max_rank must be a positive int, got {max_rank!r}")
    _check_ks(ks)
    qp = _labels(q_pids, "q_pids", nq, qname)
    gp = _labels(g_pids, "g_pids", ng, gname)
    qc = _labels(q_camids, "q_camids", nq, qname)
    gc = _labels(g_camids, "g_camids", ng, gname)
    qpc, gpc = _codes(qp, gp)
    qcc, gcc = _codes(qc, gc)
    return qp, qc, qpc, gpc, qcc, gcc


def _check_ks(ks: Sequence[int]) -> None:
    if not len(ks) or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
                          for k in ks):
        raise InputError(f"ks must be a non-empty sequence of positive ints, got {ks!r}")


def image_reid_metrics(
    q_feats: ArrayLike, g_feats: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike,
    q_camids: ArrayLike, g_camids: ArrayLike, *, max_rank: int = 50,
    metric: Literal["cosine", "euclidean"] = "cosine", chunk_size: int | None = None,
    per_query: bool = False, ks: Sequence[int] = (1, 5, 10),
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """CMC, mAP and mINP of image ReID from features, as torchreid's ``evaluate_rank``.

    Distances are torchreid's (``cosine``: 1 - cos; ``euclidean``: squared L2), computed in
    ``dtype`` on the features' device. Only ``chunk_size`` query rows of distances exist at
    once (plus one 64-row block; None: as many rows as keep about 8M scores, so memory is
    bounded whatever the number of queries); results do not depend on the chunk.

    Returns ``cmc`` (float32 array, fractions, ``min(max_rank, G)`` long), ``mAP`` and ``mINP``
    (fractions, as torchreid), ``num_queries``, ``num_valid``, ``num_skipped`` and ``skipped``
    (indices of queries without any true match once same-pid-same-camera items are removed;
    they are left out of every average). ``per_query=True`` adds ``per_query``, a DataFrame with
    one row per query: pid, camid, valid, n_pos, n_junk, first_rank, last_rank (-1 if invalid),
    ap, inp (NaN if invalid), ``hit@k`` for ``k`` in ``ks``.
    """
    if metric not in ("cosine", "euclidean"):
        raise InputError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    q = _features(q_feats, "q_feats", dtype)
    g = _features(g_feats, "g_feats", dtype).to(q.device)
    _same_dim(q, g, "q_feats", "g_feats")
    qp, qc, qpc, gpc, qcc, gcc = _image_args(
        q_pids, g_pids, q_camids, g_camids, q.shape[0], g.shape[0], "q_feats rows", "g_feats rows",
        max_rank, ks)
    chunks = _score_chunks(q, g, metric, _chunk(chunk_size, q.shape[0], g.shape[0]))
    pq, junk = _image_run(chunks, q.shape[0], qpc, qcc, gpc, gcc)
    return _image_summary(pq, junk, qp, qc, g.shape[0], max_rank, ks, per_query)


def from_distmat(
    distmat: ArrayLike, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike,
    g_camids: ArrayLike, *, max_rank: int = 50, chunk_size: int | None = None,
    per_query: bool = False, ks: Sequence[int] = (1, 5, 10),
) -> dict[str, Any]:
    """Image ReID metrics from a given (Q, G) distance matrix (smaller = more similar).

    Same outputs as :func:`image_reid_metrics`. The matrix keeps its dtype (the tie order of
    ``np.argsort`` depends on it, as in torchreid); ``chunk_size`` only bounds temporaries.
    """
    d = distmat.detach().cpu().numpy() if isinstance(distmat, Tensor) else np.asarray(distmat)
    if d.ndim != 2 or 0 in d.shape:
        raise InputError(f"distmat must be a non-empty 2-D (Q, G) matrix, got shape {d.shape}")
    if d.dtype.kind not in "fiu":
        raise InputError(f"distmat must hold numbers, got dtype {d.dtype}")
    if d.dtype.kind == "f" and np.isnan(d).any():
        bad = int(np.isnan(d).any(axis=1).argmax())
        raise InputError(f"distmat has NaN values (first in row {bad})")
    qp, qc, qpc, gpc, qcc, gcc = _image_args(
        q_pids, g_pids, q_camids, g_camids, d.shape[0], d.shape[1], "distmat rows",
        "distmat columns", max_rank, ks)
    chunk = _chunk(chunk_size, d.shape[0], d.shape[1])
    chunks = ((i, d[i : i + chunk]) for i in range(0, d.shape[0], chunk))
    pq, junk = _image_run(chunks, d.shape[0], qpc, qcc, gpc, gcc)
    return _image_summary(pq, junk, qp, qc, d.shape[1], max_rank, ks, per_query)


# --------------------------------------------------------------------------- text-to-image


def _text_summary(pq: dict[str, np.ndarray], q_pids: np.ndarray, ks: Sequence[int],
                  per_query: bool) -> dict[str, Any]:
    valid = pq["valid"]
    _skipped_check(valid, "text_pids vs image_pids")
    first = pq["first_rank"][valid]
    out: dict[str, Any] = {f"R{k}": 100.0 * float(np.mean(first <= k)) for k in ks}
    out.update({
        "mAP": 100.0 * float(np.mean(pq["ap"][valid])),
        "mINP": 100.0 * float(np.mean(pq["inp"][valid])),
        "num_queries": len(valid),
        "num_valid": int(valid.sum()),
        "num_skipped": int((~valid).sum()),
        "skipped": np.flatnonzero(~valid),
    })
    if per_query:
        out["per_query"] = _frame(pq, {"pid": q_pids}, ks)
    return out


def _text_run(chunks: Iterator[tuple[int, Tensor]], n: int, tpc: np.ndarray,
              ipc: np.ndarray) -> dict[str, np.ndarray]:
    parts = []
    gcode: Tensor | None = None
    for start, s in chunks:
        if gcode is None:
            gcode = torch.as_tensor(ipc, device=s.device)
        r, k = _text_chunk(s, tpc[start : start + s.shape[0]], gcode)
        parts.append((start, r, k))
        del s  # before the next chunk is made: one chunk of scores at a time
        release_freed_memory()  # see _image_run
    rows, ranks = _merge(parts)
    return _per_query(rows, ranks, n)


def text_image_metrics(
    text_feats: ArrayLike, image_feats: ArrayLike, text_pids: ArrayLike, image_pids: ArrayLike,
    *, ks: Sequence[int] = (1, 5, 10), chunk_size: int | None = None, per_query: bool = False,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """R@K, mAP and mINP of text-to-image ReID, as IRRA computes them (percentages).

    Similarity is the cosine of L2-normalised features; every image of the text's identity is a
    positive (no camera filter). Ranking: higher similarity first, ties by lower image index.
    Returns ``R{k}`` for ``k`` in ``ks``, ``mAP``, ``mINP`` (all in percent), ``num_queries``,
    ``num_valid``, ``num_skipped``, ``skipped`` (texts whose identity has no image; left out of
    every average) and with ``per_query=True`` a DataFrame ``per_query`` (pid, valid, n_pos,
    first_rank, last_rank, ap, inp, ``hit@k``). ``chunk_size`` bounds the text rows scored at
    once (None: about 8M scores at once); results do not depend on it.
    """
    _check_ks(ks)
    t = _features(text_feats, "text_feats", dtype)
    im = _features(image_feats, "image_feats", dtype).to(t.device)
    _same_dim(t, im, "text_feats", "image_feats")
    tp = _labels(text_pids, "text_pids", t.shape[0], "text_feats rows")
    ip = _labels(image_pids, "image_pids", im.shape[0], "image_feats rows")
    tpc, ipc = _codes(tp, ip)
    chunks = _score_chunks(t, im, "similarity", _chunk(chunk_size, t.shape[0], im.shape[0]))
    return _text_summary(_text_run(chunks, t.shape[0], tpc, ipc), tp, ks, per_query)


def from_similarity(
    similarity: ArrayLike, text_pids: ArrayLike, image_pids: ArrayLike, *,
    ks: Sequence[int] = (1, 5, 10), chunk_size: int | None = None, per_query: bool = False,
) -> dict[str, Any]:
    """Text-to-image metrics from a given (T, I) similarity matrix (larger = more similar)."""
    _check_ks(ks)
    s = similarity.detach() if isinstance(similarity, Tensor) else torch.as_tensor(
        np.asarray(similarity))
    if s.dim() != 2 or 0 in s.shape:
        raise InputError(f"similarity must be a non-empty 2-D (T, I) matrix, got {tuple(s.shape)}")
    if s.is_floating_point() and bool(torch.isnan(s).any()):
        raise InputError("similarity has NaN values")
    tp = _labels(text_pids, "text_pids", s.shape[0], "similarity rows")
    ip = _labels(image_pids, "image_pids", s.shape[1], "similarity columns")
    tpc, ipc = _codes(tp, ip)
    chunk = _chunk(chunk_size, s.shape[0], s.shape[1])
    chunks = ((i, s[i : i + chunk]) for i in range(0, s.shape[0], chunk))
    return _text_summary(_text_run(chunks, s.shape[0], tpc, ipc), tp, ks, per_query)
