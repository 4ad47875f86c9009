"""Random-forest permutation importance on identity-grouped held-out folds.

``sklearn.inspection.permutation_importance`` permutes single columns, but a multiclass
attribute is a block of one-hot columns. So the estimator is a ``Pipeline``: a ``OneHotEncoder``
(``drop="if_binary"``: a binary attribute stays one 0/1 column) in front of the forest
(``RandomForestRegressor`` for AP/ΔAP, ``RandomForestClassifier`` for the rank-1 hit). It takes
the attribute-level codes (one column per attribute, see :mod:`~reid_explain.attributes.design`),
so permuting one input column permutes the attribute's whole block, while the trees split on
one-hot classes (an ordinal code would make a 9-colour attribute need many splits).

Importance is measured on held-out queries of *unseen identities*: folds come from
``GroupKFold(shuffle=True)`` by pid, because a forest scored on identities it was trained on
measures memorisation of those identities.

Scores: R² for regressors, ``neg_brier_score`` for the classifier (a proper score that stays
defined when a fold has a single class). The attribute's importance is the mean over folds of
sklearn's ``importances_mean``; its spread is the standard deviation over all folds × repeats.
A final forest on every query (same settings) is kept for SHAP.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier, RandomForestRegressor
from sklearn.inspection import permutation_importance
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder
from sklearn.utils import Bunch

from reid_explain.errors import InputError

__all__ = ["ForestFit", "ForestFold", "block_sizes", "forest_importance", "make_forest",
           "SCORING"]

#: response kind -> scoring passed to ``permutation_importance``
SCORING = {"binary": "neg_brier_score", "fraction": "r2", "delta": "r2"}


def make_forest(kind: str, n_levels: list[int], *, n_estimators: int = 100,
                min_samples_leaf: int = 5, random_state: int = 0,
                n_jobs: int | None = 1) -> Pipeline:
    """One-hot encoder + forest for a response kind (a classifier for the binary hit).

    ``n_levels[i]``: number of codes of input column ``i`` (codes ``0..n-1``), fixed up front so
    that every fold encodes alike.
    """
    cls = RandomForestClassifier if kind == "binary" else RandomForestRegressor
    encoder = OneHotEncoder(categories=[list(range(k)) for k in n_levels], drop="if_binary",
                            sparse_output=False, dtype=np.float32)
    forest = cls(n_estimators=n_estimators, min_samples_leaf=min_samples_leaf,
                 random_state=random_state, n_jobs=n_jobs)
    return Pipeline([("onehot", encoder), ("forest", forest)])


def block_sizes(n_levels: list[int]) -> list[int]:
    """One-hot width of each attribute (1 for a binary one, as ``drop="if_binary"``)."""
    return [1 if k == 2 else k for k in n_levels]


@dataclass
class ForestFold:
    """One held-out fold: its fitted forest, its test rows and sklearn's raw result."""

    model: Pipeline
    test_index: np.ndarray
    result: Bunch   # permutation_importance output: importances (features, repeats), mean, std


@dataclass
class ForestFit:
    folds: list[ForestFold]
    model: Pipeline               # encoder + forest fitted on every query (for SHAP)
    importance: pd.DataFrame      # index attribute: mean, std
    scoring: str
    n_splits: int
    n_levels: list[int]


def forest_importance(features: pd.DataFrame, y: np.ndarray, pids: np.ndarray, kind: str,
                      n_levels: list[int] | None = None, *,
                      n_estimators: int = 100, min_samples_leaf: int = 5, n_splits: int = 5,
                      n_repeats: int = 5, random_state: int = 0,
                      n_jobs: int | None = 1) -> ForestFit:
    """Fit per fold, permute each attribute on the held-out identities, average over folds."""
    y = np.asarray(y)
    n_groups = len(np.unique(pids))
    if n_groups < 2:
        raise InputError("forest: permutation importance on held-out identities needs at "
                         f"least 2 identities, got {n_groups}")
    if n_splits > n_groups:
        warnings.warn(f"forest: {n_groups} identities, fewer than n_splits={n_splits}; using "
                      f"{n_groups} folds", UserWarning, stacklevel=2)
        n_splits = n_groups
    if n_levels is None:
        n_levels = [int(features[c].max()) + 1 for c in features.columns]
    scoring = SCORING[kind]
    splitter = GroupKFold(n_splits=n_splits, shuffle=True, random_state=random_state)
    X = features.to_numpy()  # numpy in: the encoder's per-call pandas checks cost 2x
    folds = []
    for train, test in splitter.split(X, y, groups=pids):
        if kind == "binary" and len(np.unique(y[train])) < 2:
            # every identity with the rarer outcome is held out: nothing to learn in this fold
            warnings.warn("forest: a fold's training identities all share one outcome; fold "
                          "left out", UserWarning, stacklevel=2)
            continue
        model = make_forest(kind, n_levels, n_estimators=n_estimators,
                            min_samples_leaf=min_samples_leaf, random_state=random_state,
                            n_jobs=n_jobs)
        model.fit(X[train], y[train])
        result = permutation_importance(model, X[test], y[test], scoring=scoring,
                                        n_repeats=n_repeats, random_state=random_state,
                                        n_jobs=n_jobs)
        folds.append(ForestFold(model, test, result))
    if not folds:
        raise InputError("forest: no fold has both outcomes among its training identities")
    stacked = np.stack([f.result.importances for f in folds])  # (folds, features, repeats)
    importance = pd.DataFrame({
        "mean": np.mean([f.result.importances_mean for f in folds], axis=0),
        "std": stacked.transpose(1, 0, 2).reshape(features.shape[1], -1).std(axis=1),
    }, index=pd.Index(features.columns, name="attribute"))
    full = make_forest(kind, n_levels, n_estimators=n_estimators,
                       min_samples_leaf=min_samples_leaf, random_state=random_state,
                       n_jobs=n_jobs).fit(X, y)
    return ForestFit(folds, full, importance, scoring, n_splits, list(n_levels))
