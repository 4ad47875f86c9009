"""Per-query controlled ablation of a MoSAIC-ReID model: AP, rank-1 hit and ΔAP per expert group.

The attribute-importance study's MoE responses (docs/attribute_study.md): with every query and
gallery image routed by the oracle, a query's ``ap`` and ``hit``; then, for each expert group
``g`` switched off through ``moe.ablate(g)`` (the rest of the oracle routing unchanged),
``delta_ap_<g> = AP(all experts) - AP(without g)``.

**Both sides are ablated**: the query *and* the gallery are embedded with the group off, so the
comparison is "the model without that group" against "the model with it", which is what a
deployed model without the expert would do. (Ablating only the query would mix two models in
one distance.)

Cost: the gated mixture leaves every sample that is not routed to a group bit-identical when
that group is switched off (tested in ``tests/test_lora_moe.py``), so for each group only the
images routed to it are embedded again; the other rows are reused. A presence group (hat,
handbag) thus costs a forward of the few images that carry it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from reid_explain.attributes.design import DELTA_PREFIX

__all__ = ["ablation_outcomes", "oracle_embed"]


@torch.no_grad()
def oracle_embed(moe: Any, images: Tensor, codes: Tensor, *, ablate: Sequence[str] = (),
                 batch_size: int = 64) -> Tensor:
    """Embeddings of ``images`` routed by the oracle from ``codes``, with ``ablate`` groups off."""
    out = []
    for start in range(0, len(images), batch_size):
        sl = slice(start, start + batch_size)
        with moe.route(codes[sl]), moe.ablate(*ablate):
            out.append(moe.adapter.embed_image(images[sl]).float().cpu())
    if not out:
        raise ValueError("no images to embed")
    return torch.cat(out)


def _routed_to(moe: Any, codes: Tensor, group: str) -> Tensor:
    """Bool per sample: is any expert of ``group`` active under the oracle for ``codes``?"""
    gates = moe.layout.gates(codes)
    return gates[:, list(moe.layout.group(group).experts)].sum(1) > 0


def _ablated(moe: Any, images: Tensor, codes: Tensor, full: Tensor, group: str,
             batch_size: int) -> Tensor:
    """``full`` with the rows routed to ``group`` re-embedded with that group off."""
    routed = _routed_to(moe, codes, group)
    out = full.clone()
    if bool(routed.any()):
        idx = routed.nonzero().squeeze(1)
        out[idx] = oracle_embed(moe, images[idx], codes[idx], ablate=(group,),
                                batch_size=batch_size)
    return out


def ablation_outcomes(moe: Any, query: Tensor, gallery: Tensor, query_codes: Tensor,
                      gallery_codes: Tensor, q_pids: Any, g_pids: Any, q_camids: Any,
                      g_camids: Any, groups: Sequence[str] | None = None, *,
                      metric: Literal["cosine", "euclidean"] = "cosine", batch_size: int = 64,
                      query_ids: Sequence | None = None) -> pd.DataFrame:
    """One row per query with a true match: ``query``, ``pid``, ``camid``, ``ap``, ``hit`` (all
    experts, oracle routing) and ``delta_ap_<group>`` for each of ``groups`` (default: every
    group of ``moe.layout``), ablating the group on query *and* gallery.

    ``query``/``gallery``: image tensors ``(N, 3, H, W)``; ``*_codes``: ``(N, A)`` attribute codes
    in the layout's schema order (-1 unknown), as ``ImageReidDataset`` items carry them. AP and
    hit come from :func:`reid_explain.evaluation.retrieval.image_reid_metrics` (``per_query=True``,
    torchreid's protocol); queries without a true match are dropped with a warning, as in
    :func:`reid_explain.attributes.per_query_outcomes`. The host and experts run in eval mode
    (their modes are restored afterwards).
    """
    from reid_explain.evaluation.retrieval import image_reid_metrics

    query_codes, gallery_codes = torch.as_tensor(query_codes), torch.as_tensor(gallery_codes)
    if len(query_codes) != len(query) or len(gallery_codes) != len(gallery):
        raise ValueError(f"codes rows ({len(query_codes)}, {len(gallery_codes)}) must match the "
                         f"images ({len(query)}, {len(gallery)})")
    groups = list(moe.layout.group_names if groups is None else groups)
    for group in groups:
        moe.layout.group(group)  # KeyError naming the groups

    def per_query(q: Tensor, g: Tensor) -> pd.DataFrame:
        return image_reid_metrics(q, g, q_pids, g_pids, q_camids, g_camids, metric=metric,
                                  per_query=True, ks=(1,), max_rank=1)

    model = moe.model
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        q_full = oracle_embed(moe, query, query_codes, batch_size=batch_size)
        g_full = oracle_embed(moe, gallery, gallery_codes, batch_size=batch_size)
        full = per_query(q_full, g_full)
        pq = full["per_query"]
        deltas: dict[str, np.ndarray] = {}
        for group in groups:
            q_off = _ablated(moe, query, query_codes, q_full, group, batch_size)
            g_off = _ablated(moe, gallery, gallery_codes, g_full, group, batch_size)
            ap_off = per_query(q_off, g_off)["per_query"]["ap"].to_numpy(np.float64)
            deltas[group] = pq["ap"].to_numpy(np.float64) - ap_off
    finally:
        for module, mode in modes:
            module.training = mode
    ids = np.arange(len(pq)) if query_ids is None else np.asarray(list(query_ids))
    if len(ids) != len(pq):
        raise ValueError(f"query_ids has {len(ids)} entries but there are {len(pq)} queries")
    if full["num_skipped"]:
        warnings.warn(f"{full['num_skipped']} of {len(pq)} queries have no true match in the "
                      "gallery (after removing same-camera matches); they are left out",
                      UserWarning, stacklevel=2)
    valid = pq["valid"].to_numpy(bool)
    out = pd.DataFrame({"query": ids[valid], "pid": pq["pid"].to_numpy()[valid],
                        "camid": pq["camid"].to_numpy()[valid],
                        "ap": pq["ap"].to_numpy(np.float64)[valid],
                        "hit": pq["hit@1"].to_numpy(np.int64)[valid]})
    for group, delta in deltas.items():
        # exact zeros stay zeros; float noise of identical embeddings cannot arise (rows copied)
        out[f"{DELTA_PREFIX}{group}"] = np.clip(delta[valid], -1.0, 1.0)
    return out
