"""Consensus ranking: the mean of each method's rank of an attribute.

Each method gives a score per attribute where larger means more important (GLM and tests:
-log10 p, forest: permutation importance, SHAP: mean |SHAP|). Scores are on incomparable
scales, so they are turned into ranks (1 = most important, ties share their average rank, a
missing score ranks last) and the consensus is the mean rank over every (response, method)
column. The consensus order sorts by mean rank; ties go to the better best-rank, then to schema
order. Rank aggregation by mean rank (Borda count) is robust to one method's scale and needs no
tuning.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["consensus_ranking", "method_ranks"]


def method_ranks(scores: pd.DataFrame) -> pd.DataFrame:
    """Rank each column of ``scores`` (attributes × methods), 1 = largest score."""
    return scores.rank(axis=0, ascending=False, method="average", na_option="bottom")


def consensus_ranking(ranks: pd.DataFrame, order: list[str] | None = None) -> pd.DataFrame:
    """The consensus table: one row per attribute in consensus order.

    Columns: ``attribute``, ``consensus_rank`` (1..A), ``mean_rank``, ``best_rank``, then every
    method's rank. ``order`` (schema order) breaks the remaining ties.
    """
    order = list(ranks.index) if order is None else [a for a in order if a in ranks.index]
    table = ranks.loc[order].copy()
    table.insert(0, "mean_rank", ranks.loc[order].mean(axis=1))
    table.insert(1, "best_rank", ranks.loc[order].min(axis=1))
    table["_schema"] = np.arange(len(order))
    table = table.sort_values(["mean_rank", "best_rank", "_schema"], kind="stable")
    table = table.drop(columns="_schema")
    table.insert(0, "consensus_rank", np.arange(1, len(table) + 1))
    table.index.name = "attribute"
    return table.reset_index()
