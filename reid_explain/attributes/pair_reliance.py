"""Pairwise reliance: how much more alike the model finds two *different* people who share an
attribute.

The study (:mod:`.study`) relates each query's AP to its own attribute values. That measures
which values make retrieval easy or hard (how much of the variance in AP an attribute explains),
not how much the model relies on the attribute: every upper colour is as easy as any other, so
a model that matches on little else than upper colour shows little AP variance along it. The
causal audit (:mod:`.causal`) measures reliance directly, by re-rendering, which real data
cannot do.

Reliance leaves an observational trace real data does have: if the model matches on an
attribute, two different people who share its state look more alike to it than two who do
not. Over the query x gallery pairs of different identities (the distractors, whose similarity
is what costs AP), the cosine similarity is regressed on one indicator per attribute, "both
people have the same state" (statsmodels OLS, all attributes jointly, so attributes that travel
together are separated)::

    similarity(q, g) = b0 + sum_a b_a * [attr_a(q) == attr_a(g)] + e

``b_a`` is the similarity one shared attribute adds, per occurrence of a match, whatever the
attribute's prevalence. Pairs share identities, so standard errors are cluster-robust in both
the query's and the gallery image's identity (two-way clustering, Cameron, Gelbach & Miller
2011: ``cov_type="cluster"`` with two group columns). The ranking orders attributes by ``b_a``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import statsmodels.api as sm
import torch

from reid_explain.errors import InputError

from .design import query_attributes

__all__ = ["PairReliance", "pair_reliance"]


@dataclass
class PairReliance:
    """``table``: one row per attribute (``effect``, its CI ``low``/``high``, ``p``, ``rank``),
    most relied on first; ``ranking``: the attributes in that order."""

    table: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def ranking(self) -> list[str]:
        return self.table["attribute"].tolist()

    def to_json(self) -> dict[str, Any]:
        return {"config": self.config, "ranking": self.ranking,
                "attributes": self.table.to_dict(orient="records")}


def pair_reliance(query_features: torch.Tensor, gallery_features: torch.Tensor,
                  query_pids: Sequence[int], gallery_pids: Sequence[int],
                  attributes: pd.DataFrame, *, schema: str | None = None,
                  split: str | None = None, max_pairs: int | None = 200_000,
                  seed: int = 0, level: float = 0.95) -> PairReliance:
    """Rank attributes by how much sharing one raises the model's similarity between two
    different people (module docstring).

    ``attributes``: the table the study reads, tidy or wide (:func:`~.design.query_attributes`,
    with its ``schema`` and ``split``); a multi-hot colour is one state, its ``"|"``-joined set.
    Features are L2-normalised here; identities without a full set of labels (distractors,
    junk) are left out; ``max_pairs`` query-gallery pairs are drawn uniformly (seeded) when
    there are more, and those of one identity left out."""
    q = torch.nn.functional.normalize(torch.as_tensor(query_features).float(), dim=1)
    g = torch.nn.functional.normalize(torch.as_tensor(gallery_features).float(), dim=1)
    q_pids, g_pids = np.asarray(query_pids), np.asarray(gallery_pids)
    if len(q) != len(q_pids) or len(g) != len(g_pids):
        raise InputError(f"pair_reliance: {len(q)} query and {len(g)} gallery features for "
                         f"{len(q_pids)} and {len(g_pids)} identities")
    if not (torch.isfinite(q).all() and torch.isfinite(g).all()):
        raise InputError("pair_reliance: the features hold NaN or inf")
    pids = np.unique(np.concatenate([q_pids, g_pids]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # unlabelled identities: left out, below
        states, labelled = query_attributes(attributes, pids, schema, split=split,
                                            missing="drop")
    names = list(states.columns)
    known = pids[labelled]
    q_rows = np.flatnonzero(np.isin(q_pids, known))
    g_rows = np.flatnonzero(np.isin(g_pids, known))
    n_all = len(q_rows) * len(g_rows)
    if max_pairs is None or n_all <= max_pairs:
        flat = np.arange(n_all)
    else:  # drawn without building every pair: Market-1501's are 65 million
        flat = np.sort(np.random.default_rng(seed).choice(n_all, max_pairs, replace=False))
    qi, gi = q_rows[flat // len(g_rows)], g_rows[flat % len(g_rows)]
    different = q_pids[qi] != g_pids[gi]
    qi, gi = qi[different], gi[different]
    if len(np.unique(q_pids[qi])) < 3 or len(np.unique(g_pids[gi])) < 3:
        raise InputError("pair_reliance needs pairs of at least 3 labelled identities on each "
                         "side")
    similarity = (q[torch.as_tensor(qi)] * g[torch.as_tensor(gi)]).sum(dim=1).numpy()
    values = states.to_numpy()  # one row per identity of ``known``, which is sorted
    qa, ga = values[np.searchsorted(known, q_pids[qi])], values[np.searchsorted(known, g_pids[gi])]
    shared = (qa == ga).astype(float)
    varying = [j for j in range(len(names)) if 0 < shared[:, j].mean() < 1]
    if not varying:
        raise InputError("pair_reliance: no attribute is shared by some pairs and not others")
    exog = sm.add_constant(shared[:, varying], has_constant="add")
    groups = np.column_stack([pd.factorize(q_pids[qi])[0], pd.factorize(g_pids[gi])[0]])
    fit = sm.OLS(similarity, exog).fit(cov_type="cluster", cov_kwds={"groups": groups})
    interval = np.asarray(fit.conf_int(alpha=1 - level))
    table = pd.DataFrame({
        "attribute": [names[j] for j in varying],
        "effect": fit.params[1:], "low": interval[1:, 0], "high": interval[1:, 1],
        "p": fit.pvalues[1:], "shared": shared[:, varying].mean(axis=0),
    }).sort_values("effect", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(1, "rank", np.arange(1, len(table) + 1))
    config = {"pairs": int(len(qi)), "queries": int(len(np.unique(qi))),
              "gallery": int(len(np.unique(gi))), "max_pairs": max_pairs, "seed": seed,
              "level": level, "constant_attributes": [names[j] for j in range(len(names))
                                                      if j not in varying],
              "model": "OLS of distractor similarity on shared-state indicators, two-way "
                       "cluster-robust by query and gallery identity"}
    return PairReliance(table=table, config=config)
