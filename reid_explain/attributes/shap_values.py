"""SHAP importance: ``shap.TreeExplainer`` on the study's forest, mean |SHAP| per attribute.

The forest sees one-hot columns (:mod:`.forest`); SHAP values are additive, so an attribute's
value is the sum over its block of columns. For the classifier the values are those of the
positive class (a rank-1 hit), on the probability scale the forest predicts. No background
data is passed: the explainer uses the trees' own path coverage ("tree_path_dependent").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from .forest import block_sizes

__all__ = ["ShapFit", "sum_blocks", "tree_shap"]


@dataclass
class ShapFit:
    values: np.ndarray          # (queries, attributes): SHAP summed over each attribute's block
    column_values: np.ndarray   # (queries, one-hot columns): TreeExplainer's own output
    base_value: float
    features: pd.DataFrame      # attribute-level codes explained (the beeswarm's colours)
    importance: pd.Series       # mean |SHAP| per attribute


def sum_blocks(column_values: np.ndarray, n_levels: list[int]) -> np.ndarray:
    """Per-attribute SHAP: the sum of each attribute's one-hot block of columns."""
    edges = np.cumsum([0, *block_sizes(n_levels)])
    return np.stack([column_values[:, a:b].sum(axis=1)
                     for a, b in zip(edges[:-1], edges[1:], strict=True)], axis=1)


def tree_shap(model: Pipeline, features: pd.DataFrame, n_levels: list[int]) -> ShapFit:
    """Exact tree SHAP of the pipeline's forest on the encoded ``features``."""
    import shap

    encoded = model[:-1].transform(features.to_numpy())
    explainer = shap.TreeExplainer(model[-1])
    column_values = np.asarray(explainer.shap_values(encoded))
    base = np.atleast_1d(np.asarray(explainer.expected_value, dtype=float))
    if column_values.ndim == 3:  # classifier: (n, columns, classes); keep the positive class
        column_values = column_values[:, :, -1]
        base = base[-1:]
    values = sum_blocks(column_values, n_levels)
    importance = pd.Series(np.abs(values).mean(axis=0), index=features.columns,
                           name="mean_abs_shap")
    importance.index.name = "attribute"
    return ShapFit(values, column_values, float(base[0]), features, importance)
