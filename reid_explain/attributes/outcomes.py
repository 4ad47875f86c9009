"""Per-query outcomes of any ReID model: AP and rank-1 hit under the Market-1501 protocol.

This is what lets the attribute study audit a model without experts (a torchreid CNN, a CLIP
ViT): extract query and gallery features, call :func:`per_query_outcomes`, pass the table to
:func:`~reid_explain.attributes.study.run_study`. The numbers come from
:func:`reid_explain.evaluation.retrieval.image_reid_metrics` (``per_query=True``), which
reproduces torchreid's ``evaluate_rank`` (same-pid same-camera gallery items removed, torchreid's
tie order). Queries without any true match left are dropped with a warning, as torchreid skips
them.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = ["per_query_outcomes"]


def per_query_outcomes(q_feats: Any, g_feats: Any, q_pids: Any, g_pids: Any, q_camids: Any,
                       g_camids: Any, *, metric: Literal["cosine", "euclidean"] = "cosine",
                       query_ids: Sequence | None = None) -> pd.DataFrame:
    """One row per query with a true match: ``query``, ``pid``, ``camid``, ``ap``, ``hit``.

    ``hit`` is 1 when the best-ranked valid gallery item is a true match (rank-1), else 0;
    ``query`` is ``query_ids`` (default: the query's row index).
    """
    from reid_explain.evaluation.retrieval import image_reid_metrics

    out = image_reid_metrics(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids,
                             metric=metric, per_query=True, ks=(1,), max_rank=1)
    pq = out["per_query"]
    if query_ids is not None:
        ids = list(query_ids)
        if len(ids) != len(pq):
            from reid_explain.errors import InputError

            raise InputError(f"query_ids has {len(ids)} entries but q_feats has {len(pq)} rows")
        pq["query"] = ids
    if out["num_skipped"]:
        warnings.warn(f"{out['num_skipped']} of {len(pq)} queries have no true match in the "
                      "gallery (after removing same-camera matches); they are left out",
                      UserWarning, stacklevel=2)
    valid = pq[pq["valid"].to_numpy(bool)]
    return pd.DataFrame({
        "query": valid["query"].to_numpy(),
        "pid": valid["pid"].to_numpy(),
        "camid": valid["camid"].to_numpy(),
        "ap": valid["ap"].to_numpy(np.float64),
        "hit": valid["hit@1"].to_numpy(np.int64),
    })
