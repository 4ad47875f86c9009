"""Retrieval metrics against torchreid's ``evaluate_rank``, hand-computed examples, chunking."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from reid_explain.errors import InputError
from reid_explain.evaluation.retrieval import (
    from_distmat,
    from_similarity,
    image_reid_metrics,
    text_image_metrics,
)

warnings.filterwarnings("ignore", message=".*Cython evaluation.*")


def _torchreid_rank(distmat, qp, gp, qc, gc, max_rank):
    import torchreid

    return torchreid.metrics.evaluate_rank(distmat, qp, gp, qc, gc, max_rank=max_rank,
                                           use_metric_cuhk03=False)


def _market_like(seed: int, nq: int = 120, ng: int = 900, n_ids: int = 40, n_cams: int = 6):
    rng = np.random.default_rng(seed)
    return (rng, rng.integers(0, n_ids, nq), rng.integers(0, n_ids, ng),
            rng.integers(0, n_cams, nq), rng.integers(0, n_cams, ng))


def _same(a: dict, b: dict) -> None:
    """Bit-identical summaries and per-query tables."""
    for key in ("mAP", "mINP", "num_valid", "num_skipped"):
        assert a[key] == b[key], key
    for key in [k for k in a if k.startswith("R")]:
        assert a[key] == b[key], key
    if "cmc" in a:
        np.testing.assert_array_equal(a["cmc"], b["cmc"])
    np.testing.assert_array_equal(a["skipped"], b["skipped"])
    if "per_query" in a:
        assert a["per_query"].equals(b["per_query"])


# ----------------------------------------------------------------------------- image ReID


KINDS = ["random64", "random32", "ties_int", "ties_float32", "constant", "mixed"]


@pytest.mark.parametrize("kind", KINDS)
def test_from_distmat_equals_torchreid(kind: str) -> None:
    rng, qp, gp, qc, gc = _market_like(1)
    shape = (len(qp), len(gp))
    distmat = {
        "random64": lambda: rng.random(shape),
        "random32": lambda: rng.random(shape).astype(np.float32),
        # integer-valued distances: many ties, broken by numpy's (unstable) default argsort
        "ties_int": lambda: rng.integers(0, 4, shape).astype(np.float64),
        "ties_float32": lambda: rng.integers(0, 3, shape).astype(np.float32) / 2,
        "constant": lambda: np.ones(shape, np.float32),
        # some rows tied, some not (tied rows take a different code path)
        "mixed": lambda: np.where(np.arange(shape[0])[:, None] % 3 == 0,
                                  np.round(rng.random(shape), 1), rng.random(shape)),
    }[kind]()
    cmc, mAP = _torchreid_rank(distmat, qp, gp, qc, gc, max_rank=50)
    ours = from_distmat(distmat, qp, gp, qc, gc, max_rank=50)
    np.testing.assert_array_equal(ours["cmc"], cmc)  # same float32 counts / n_valid
    assert ours["cmc"].dtype == cmc.dtype
    # same APs, summed in a different order: equal to the last few ulps
    assert ours["mAP"] == pytest.approx(mAP, rel=1e-12, abs=1e-15)
    for chunk in (1, 7, 119):
        _same(from_distmat(distmat, qp, gp, qc, gc, max_rank=50, chunk_size=chunk), ours)


def test_features_equal_torchreid_on_exact_integer_distances() -> None:
    """Integer features make squared-L2 distances exact: same matrix as torchreid's, many ties."""
    import torchreid

    rng, qp, gp, qc, gc = _market_like(2, nq=150, ng=700)
    qf = torch.as_tensor(rng.integers(-2, 3, (len(qp), 8)), dtype=torch.float32)
    gf = torch.as_tensor(rng.integers(-2, 3, (len(gp), 8)), dtype=torch.float32)
    distmat = torchreid.metrics.compute_distance_matrix(qf, gf, metric="euclidean").numpy()
    cmc, mAP = _torchreid_rank(distmat, qp, gp, qc, gc, max_rank=20)
    full = image_reid_metrics(qf, gf, qp, gp, qc, gc, max_rank=20, metric="euclidean")
    np.testing.assert_array_equal(full["cmc"], cmc)
    assert full["mAP"] == pytest.approx(mAP, rel=1e-12)
    for chunk in (1, 13, 64, 100):
        _same(image_reid_metrics(qf, gf, qp, gp, qc, gc, max_rank=20, metric="euclidean",
                                 chunk_size=chunk), full)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_equals_full_from_features(metric: str, dtype: torch.dtype) -> None:
    rng, qp, gp, qc, gc = _market_like(3, nq=203, ng=500)
    qf, gf = torch.randn(len(qp), 24), torch.randn(len(gp), 24)
    kw = dict(max_rank=30, metric=metric, per_query=True, dtype=dtype)
    full = image_reid_metrics(qf, gf, qp, gp, qc, gc, **kw)
    for chunk in (1, 5, 65, 128, 1000):
        _same(image_reid_metrics(qf, gf, qp, gp, qc, gc, chunk_size=chunk, **kw), full)
    # and the full computation agrees with torchreid's own distance matrix (up to ulps)
    import torchreid

    d = torchreid.metrics.compute_distance_matrix(qf.to(dtype), gf.to(dtype), metric=metric)
    cmc, mAP = _torchreid_rank(d.numpy(), qp, gp, qc, gc, max_rank=30)
    np.testing.assert_allclose(full["cmc"], cmc, atol=2 / full["num_valid"])
    assert full["mAP"] == pytest.approx(mAP, abs=1e-3)


def test_image_hand_computed_minp_and_skipped_query() -> None:
    g_pids = np.array([1, 1, 2, 1, 3, 2])
    g_cams = np.array([0, 1, 1, 1, 0, 0])
    q_pids = np.array([1, 2, 3])
    q_cams = np.array([0, 1, 0])
    distmat = np.array([
        # q0 (pid 1, cam 0): order g0 g1 g2 g3 g4 g5; g0 is junk (same pid, same cam).
        # Kept list g1+ g2 g3+ g4 g5 -> positives at ranks 1 and 3:
        # AP = (1/1 + 2/3) / 2 = 5/6, INP = 2/3, first rank 1.
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
        # q1 (pid 2, cam 1): order g4 g5 g3 g2 g1 g0; g2 is junk.
        # Kept list g4 g5+ g3 g1 g0 -> one positive at rank 2: AP = 1/2, INP = 1/2.
        [0.6, 0.5, 0.4, 0.3, 0.1, 0.2],
        # q2 (pid 3, cam 0): its only same-pid item g4 has the same camera -> skipped.
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],
    ])
    r = from_distmat(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=4, per_query=True)
    assert r["mINP"] == pytest.approx((2 / 3 + 1 / 2) / 2)  # 7/12
    assert r["mAP"] == pytest.approx((5 / 6 + 1 / 2) / 2)  # 2/3
    np.testing.assert_array_equal(r["cmc"], np.array([0.5, 1, 1, 1], np.float32))
    assert (r["num_queries"], r["num_valid"], r["num_skipped"]) == (3, 2, 1)
    np.testing.assert_array_equal(r["skipped"], [2])
    pq = r["per_query"]
    assert pq["first_rank"].tolist() == [1, 2, -1]
    assert pq["last_rank"].tolist() == [3, 2, -1]
    assert pq["n_junk"].tolist() == [1, 1, 1]
    assert pq["valid"].tolist() == [True, True, False]
    assert pq["hit@1"].tolist() == [True, False, False]
    assert np.isnan(pq["ap"][2]) and np.isnan(pq["inp"][2])
    np.testing.assert_allclose(pq["inp"][:2], [2 / 3, 1 / 2])
    cmc, mAP = _torchreid_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=4)
    np.testing.assert_array_equal(r["cmc"], cmc)
    assert r["mAP"] == pytest.approx(mAP)


# ----------------------------------------------------------------------------- text-to-image


def _hand_example():
    # Images are one-hot features, so a text's cosine to image j is its j-th entry / its norm:
    # the ranking follows the entries of the text feature (ties stay exact ties).
    image_feats = torch.eye(5)
    image_pids = [1, 2, 1, 3, 2]
    text_feats = torch.tensor([
        # t0 pid 1: order i0+ i4 i2+ i3 i1 -> positives at ranks 1, 3:
        #   AP = (1/1 + 2/3)/2 = 5/6, INP = 2/3, first rank 1
        [0.9, 0.1, 0.5, 0.3, 0.7],
        # t1 pid 2: order i0 i2 i3 i1+ i4+ -> ranks 4, 5: AP = (1/4 + 2/5)/2 = 0.325, INP = 2/5
        [0.8, 0.2, 0.6, 0.4, 0.1],
        # t2 pid 3: i0, i1, i3 tie at 0.5, broken by index: i0 i1 i3+ i2 i4 -> rank 3:
        #   AP = 1/3, INP = 1/3
        [0.5, 0.5, 0.2, 0.5, 0.1],
        # t3 pid 7: no image of that identity -> skipped
        [0.1, 0.2, 0.3, 0.4, 0.5],
    ])
    return text_feats, image_feats, [1, 2, 3, 7], image_pids


def test_text_image_hand_computed() -> None:
    tf, imf, tp, ip = _hand_example()
    r = text_image_metrics(tf, imf, tp, ip, ks=(1, 3, 5, 10), per_query=True)
    # first ranks 1, 4, 3 over the 3 valid texts
    assert r["R1"] == pytest.approx(100 / 3)
    assert r["R3"] == pytest.approx(200 / 3)
    assert r["R5"] == pytest.approx(100.0)
    assert r["R10"] == pytest.approx(100.0)
    assert r["mAP"] == pytest.approx(100 * (5 / 6 + 0.325 + 1 / 3) / 3)  # 49.7222...
    assert r["mINP"] == pytest.approx(100 * (2 / 3 + 2 / 5 + 1 / 3) / 3)  # 46.6666...
    assert (r["num_valid"], r["num_skipped"]) == (3, 1)
    np.testing.assert_array_equal(r["skipped"], [3])
    pq = r["per_query"]
    assert pq["first_rank"].tolist() == [1, 4, 3, -1]
    assert pq["last_rank"].tolist() == [3, 5, 3, -1]
    assert pq["n_pos"].tolist() == [2, 2, 1, 0]
    np.testing.assert_allclose(pq["ap"][:3], [5 / 6, 0.325, 1 / 3])
    for chunk in (1, 2, 3, None):
        _same(text_image_metrics(tf, imf, tp, ip, ks=(1, 3, 5, 10), per_query=True,
                                 chunk_size=chunk), r)


def _irra_rank(similarity: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, k: int):
    """IRRA's ``rank`` (utils/metrics.py), with a stable sort to fix its tie order and float64
    arithmetic (IRRA's float32 would only add rounding noise to the comparison)."""
    indices = torch.sort(similarity, dim=1, descending=True, stable=True).indices
    matches = g_pids[indices].eq(q_pids.view(-1, 1))
    all_cmc = matches[:, :k].cumsum(1)
    all_cmc[all_cmc > 1] = 1
    all_cmc = all_cmc.double().mean(0) * 100
    num_rel = matches.sum(1)
    tmp_cmc = matches.cumsum(1).double()
    inp = [tmp_cmc[i][row.nonzero()[-1]] / (row.nonzero()[-1] + 1.0)
           for i, row in enumerate(matches)]
    mINP = torch.cat(inp).mean() * 100
    tmp_cmc = torch.stack([tmp_cmc[:, i] / (i + 1.0) for i in range(tmp_cmc.shape[1])], 1)
    AP = (tmp_cmc * matches).sum(1) / num_rel
    return all_cmc, AP.mean() * 100, mINP


@pytest.mark.parametrize("ties", [False, True])
def test_text_image_equals_irra_rank(ties: bool) -> None:
    rng = np.random.default_rng(4)
    ip = torch.as_tensor(rng.integers(0, 60, 300))
    tp = ip[torch.as_tensor(rng.integers(0, 300, 500))]  # every text has an image
    if ties:
        sim = torch.as_tensor(rng.integers(0, 4, (500, 300)), dtype=torch.float32)
    else:
        sim = torch.as_tensor(rng.random((500, 300)), dtype=torch.float32)
    cmc, mAP, mINP = _irra_rank(sim, tp, ip, k=10)
    for chunk in (None, 1, 37):
        r = from_similarity(sim, tp, ip, chunk_size=chunk)
        assert [r["R1"], r["R5"], r["R10"]] == pytest.approx(cmc[[0, 4, 9]].tolist(), rel=1e-12)
        assert r["mAP"] == pytest.approx(float(mAP), rel=1e-12)
        assert r["mINP"] == pytest.approx(float(mINP), rel=1e-12)


def test_text_chunked_equals_full() -> None:
    rng = np.random.default_rng(5)
    ip = np.concatenate([rng.integers(0, 80, 400), np.full(40, 999)])
    tp = np.concatenate([rng.integers(0, 85, 230), np.full(7, 999)])
    tf, imf = torch.randn(len(tp), 16), torch.randn(len(ip), 16)
    # and with ties: sign-quantised features give many equal cosines
    for t, i in ((tf, imf), (tf.sign(), imf.sign())):
        full = text_image_metrics(t, i, tp, ip, per_query=True)
        assert full["num_skipped"] > 0  # ids 80..84 have no image
        for chunk in (1, 6, 100, 1000):
            _same(text_image_metrics(t, i, tp, ip, per_query=True, chunk_size=chunk), full)
        for dtype in (torch.float64,):
            r = text_image_metrics(t, i, tp, ip, dtype=dtype)
            assert r["mAP"] == pytest.approx(full["mAP"], rel=1e-5)


# ----------------------------------------------------------------------------- bad inputs


def test_input_errors_name_the_argument() -> None:
    q, g = torch.randn(4, 8), torch.randn(6, 8)
    qp, gp, qc, gc = [1, 2, 3, 4], [1, 2, 3, 4, 5, 6], [0] * 4, [1] * 6
    bad_q = q.clone()
    bad_q[2, 3] = float("nan")
    cases = [
        (lambda: image_reid_metrics(bad_q, g, qp, gp, qc, gc), "q_feats"),
        (lambda: image_reid_metrics(q, g.clone().fill_(float("inf")), qp, gp, qc, gc),
         "g_feats"),
        (lambda: image_reid_metrics(q[0], g, qp, gp, qc, gc), "q_feats"),
        (lambda: image_reid_metrics(q, torch.randn(6, 7), qp, gp, qc, gc), "g_feats"),
        (lambda: image_reid_metrics(q, g, qp[:3], gp, qc, gc), "q_pids"),
        (lambda: image_reid_metrics(q, g, qp, gp, qc, gc[:5]), "g_camids"),
        (lambda: image_reid_metrics(q, g, qp, gp, qc, gc, metric="l1"), "metric"),
        (lambda: image_reid_metrics(q, g, qp, gp, qc, gc, chunk_size=0), "chunk_size"),
        (lambda: image_reid_metrics(q, g, qp, gp, qc, gc, max_rank=0), "max_rank"),
        (lambda: image_reid_metrics(q, g, [9] * 4, gp, qc, gc), "no query"),
        (lambda: from_distmat(np.zeros((4, 5)), qp, gp, qc, gc), "g_pids"),
        (lambda: from_distmat(np.full((4, 6), np.nan), qp, gp, qc, gc), "distmat"),
        (lambda: text_image_metrics(q, bad_q, qp, qp), "image_feats"),
        (lambda: text_image_metrics(q, g, qp, gp[:2]), "image_pids"),
        (lambda: text_image_metrics(q, g, qp, gp, ks=(0,)), "ks"),
        (lambda: from_similarity(np.zeros(3), qp, gp), "similarity"),
    ]
    for call, name in cases:
        with pytest.raises(InputError, match=name):
            call()


def test_default_chunk_is_bounded_by_the_gallery_and_changes_nothing(monkeypatch) -> None:
    """``chunk_size=None`` holds about ``AUTO_CHUNK_SCORES`` scores at once (whole 64-row
    blocks, at least one), not every query's row: here 2 blocks of a 500-image gallery."""
    from reid_explain.evaluation import retrieval

    assert retrieval._chunk(None, 50_000, 50_000) == 128  # the real default at 50k x 50k
    rng, qp, gp, qc, gc = _market_like(5, nq=203, ng=500)
    qf, gf = torch.randn(len(qp), 16), torch.randn(len(gp), 16)
    kw = dict(max_rank=30, per_query=True)
    whole = image_reid_metrics(qf, gf, qp, gp, qc, gc, chunk_size=len(qp), **kw)
    seen: list[int] = []
    real = retrieval._score_chunks

    def spy(q, g, kind, chunk):
        seen.append(chunk)
        return real(q, g, kind, chunk)

    monkeypatch.setattr(retrieval, "AUTO_CHUNK_SCORES", 2 * 64 * 500 + 10)
    monkeypatch.setattr(retrieval, "_score_chunks", spy)
    _same(image_reid_metrics(qf, gf, qp, gp, qc, gc, **kw), whole)
    assert seen == [128]
    monkeypatch.setattr(retrieval, "AUTO_CHUNK_SCORES", 10)  # smaller than one block: one block
    _same(image_reid_metrics(qf, gf, qp, gp, qc, gc, **kw), whole)
    assert seen == [128, 64]
