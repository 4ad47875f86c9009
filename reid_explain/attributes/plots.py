"""PNG figures of the study, each written atomically.

Bar charts use a bare ``matplotlib.figure.Figure`` (no pyplot state, any backend); the SHAP
beeswarm is drawn by ``shap.summary_plot(..., show=False)``, which needs pyplot, and its figure
is closed after saving.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reid_explain._util.io import atomic_path

__all__ = ["consensus_bars", "delta_bars", "importance_bars", "shap_beeswarm"]


def _save(fig, path: str | os.PathLike, dpi: int = 100) -> Path:
    with atomic_path(path) as tmp:  # fixed margins: bbox_inches="tight" renders twice
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)


def _margins(fig) -> None:
    """Room for attribute names on the left and a title on top, in inches."""
    width, height = fig.get_size_inches()
    fig.subplots_adjust(left=min(0.45, 1.3 / width), right=0.97, bottom=0.5 / height,
                        top=1 - 0.55 / height, wspace=0.15)


def importance_bars(scores: pd.DataFrame, path: str | os.PathLike, title: str = "") -> Path:
    """One horizontal bar panel per method (columns of ``scores``), attributes in row order."""
    methods = list(scores.columns)
    fig = Figure(figsize=(1.3 + 2.4 * len(methods), 0.3 * len(scores) + 1.2))
    _margins(fig)
    axes = fig.subplots(1, len(methods), sharey=True, squeeze=False)[0]
    ypos = np.arange(len(scores))
    for ax, method in zip(axes, methods, strict=True):
        ax.barh(ypos, scores[method].fillna(0).to_numpy(), color="tab:blue")
        ax.set_title(method, fontsize=9)
        ax.axvline(0, color="black", linewidth=0.5)
        ax.tick_params(labelsize=8)
    axes[0].set_yticks(ypos, list(scores.index))
    axes[0].invert_yaxis()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def consensus_bars(ranking: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Mean rank per attribute (shorter bar = more important), consensus order top down."""
    fig = Figure(figsize=(5, 0.3 * len(ranking) + 1.2))
    _margins(fig)
    ax = fig.subplots()
    ypos = np.arange(len(ranking))
    ax.barh(ypos, ranking["mean_rank"].to_numpy(), color="tab:green")
    ax.set_yticks(ypos, list(ranking["attribute"]))
    ax.invert_yaxis()
    ax.set_xlabel("mean rank over methods (1 = most important)")
    ax.set_title("consensus attribute ranking")
    return _save(fig, path)


def delta_bars(delta: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Mean ΔAP per ablated expert group with its identity-clustered 95% interval."""
    fig = Figure(figsize=(5, 0.3 * len(delta) + 1.2))
    _margins(fig)
    ax = fig.subplots()
    ypos = np.arange(len(delta))
    err = np.vstack([delta["mean"] - delta["ci_low"], delta["ci_high"] - delta["mean"]])
    ax.barh(ypos, delta["mean"].to_numpy(), xerr=err, color="tab:orange")
    ax.set_yticks(ypos, list(delta["group"]))
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.5)
    ax.set_xlabel("mean ΔAP (AP with all experts − AP with the group off)")
    return _save(fig, path)


def shap_beeswarm(values: np.ndarray, features: pd.DataFrame, path: str | os.PathLike,
                  title: str = "") -> Path:
    """SHAP's summary (beeswarm) plot of one response's forest."""
    import matplotlib.pyplot as plt
    import shap

    before = set(plt.get_fignums())
    try:
        shap.summary_plot(values, features, feature_names=list(features.columns), show=False,
                          max_display=len(features.columns))
        fig = plt.gcf()
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        return _save(fig, path)
    finally:
        for num in set(plt.get_fignums()) - before:
            plt.close(num)
