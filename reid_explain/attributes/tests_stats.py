"""Hypothesis tests per attribute, with the FDR correction stated explicitly.

Queries are grouped by the attribute's observed value (a multi-hot colour combination is its own
group); groups with fewer than :data:`MIN_GROUP` queries are left out of the test.

* Continuous responses (AP, ΔAP): a rank test — Mann-Whitney U (two groups, two-sided,
  ``scipy.stats.mannwhitneyu``) or Kruskal-Wallis (more, ``scipy.stats.kruskal``) — and a mean
  test — Welch's t-test (two groups, ``scipy.stats.ttest_ind(equal_var=False)``) or Welch's
  one-way ANOVA (more, ``statsmodels.stats.oneway.anova_oneway(use_var="unequal")``).
* Rank-1 hit: Pearson's chi-square test of independence (``scipy.stats.chi2_contingency``,
  Yates-corrected for 2×2 as scipy does), or Fisher's exact test (``scipy.stats.fisher_exact``)
  when any expected count is below 5 — exact for 2×2, Monte Carlo with a fixed seed for larger
  tables.

Within each family (one test on one response over all attributes) p-values are adjusted with
Benjamini–Hochberg (``multipletests(method="fdr_bh")``; statsmodels' default would be
Holm–Šidák, so the method is always passed). These tests treat queries as independent; the GLM's
cluster-robust errors are the identity-aware evidence.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats
from scipy.stats.contingency import expected_freq
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.oneway import anova_oneway

__all__ = ["FDR_METHOD", "MIN_GROUP", "chi2_neg_log10_p", "continuous_tests", "contingency_tests",
           "fdr"]

FDR_METHOD = "fdr_bh"
MIN_GROUP = 2
_FISHER_RESAMPLES = 9999


def fdr(pvalues: pd.Series, method: str = FDR_METHOD) -> pd.Series:
    """Adjusted p-values (q-values) over the finite entries; NaN stays NaN."""
    out = pd.Series(np.nan, index=pvalues.index)
    ok = pvalues.notna()
    if ok.any():
        out[ok] = multipletests(pvalues[ok].to_numpy(), method=method)[1]
    return out


def chi2_neg_log10_p(statistic: float, df: float) -> float:
    """-log10 of the chi2 upper tail, finite however strong the effect.

    Ranking by p would tie every very strong attribute at p = 0 (float underflow past
    chi2 ≈ 1400); scipy's ``logsf`` is used where finite, else mpmath's regularised upper
    incomplete gamma (arbitrary precision).
    """
    if not (np.isfinite(statistic) and df > 0):
        return np.nan
    log_sf = float(stats.chi2.logsf(statistic, df))
    if not np.isfinite(log_sf):
        import mpmath

        log_sf = float(mpmath.log(mpmath.gammainc(df / 2, statistic / 2, mpmath.inf,
                                                  regularized=True)))
    return -log_sf / np.log(10)


def _groups(codes: np.ndarray, y: np.ndarray) -> list[np.ndarray]:
    return [y[codes == c] for c in np.unique(codes) if (codes == c).sum() >= MIN_GROUP]


def _neg_log10(p: float) -> float:
    return float(-np.log10(max(p, np.finfo(float).tiny))) if np.isfinite(p) else np.nan


def continuous_tests(features: pd.DataFrame, y: np.ndarray,
                     fdr_method: str = FDR_METHOD) -> pd.DataFrame:
    """Rank test and mean test of a continuous response for every attribute column."""
    y = np.asarray(y, dtype=float)
    rows = []
    for attribute in features.columns:
        groups = _groups(features[attribute].to_numpy(), y)
        if len(groups) < 2:
            rows.append((attribute, len(groups), "", np.nan, np.nan, "", np.nan, np.nan))
            continue
        if len(groups) == 2:
            rank = stats.mannwhitneyu(*groups, alternative="two-sided")
            mean = stats.ttest_ind(*groups, equal_var=False)
            names = ("mann-whitney", "welch-t")
            mean_stat, mean_p = float(mean.statistic), float(mean.pvalue)
        else:
            rank = stats.kruskal(*groups)
            welch = anova_oneway(groups, use_var="unequal")
            names = ("kruskal-wallis", "welch-anova")
            mean_stat, mean_p = float(welch.statistic), float(welch.pvalue)
        rows.append((attribute, len(groups), names[0], float(rank.statistic), float(rank.pvalue),
                     names[1], mean_stat, mean_p))
    table = pd.DataFrame(rows, columns=["attribute", "n_groups", "rank_test", "rank_stat",
                                        "rank_p", "mean_test", "mean_stat", "mean_p"])
    table = table.set_index("attribute")
    table["rank_q"] = fdr(table["rank_p"], fdr_method)
    table["mean_q"] = fdr(table["mean_p"], fdr_method)
    table["rank_neg_log10_p"] = [
        chi2_neg_log10_p(st, g - 1) if t == "kruskal-wallis" else _neg_log10(p)
        for t, st, g, p in zip(table["rank_test"], table["rank_stat"], table["n_groups"],
                               table["rank_p"], strict=True)]
    table["mean_neg_log10_p"] = table["mean_p"].map(_neg_log10)
    return table


def contingency_tests(features: pd.DataFrame, hit: np.ndarray, *, random_state: int = 0,
                      fdr_method: str = FDR_METHOD) -> pd.DataFrame:
    """Chi-square (or Fisher's exact when an expected count < 5) of value × rank-1 hit."""
    hit = np.asarray(hit).astype(np.int64)
    rows = []
    for attribute in features.columns:
        codes = features[attribute].to_numpy()
        kept = [c for c in np.unique(codes) if (codes == c).sum() >= MIN_GROUP]
        table = np.array([[np.sum((codes == c) & (hit == h)) for h in (0, 1)] for c in kept])
        table = table[:, table.sum(axis=0) > 0]
        if len(kept) < 2 or table.shape[1] < 2:
            rows.append((attribute, len(kept), "", np.nan, np.nan, np.nan))
            continue
        if (expected_freq(table) < 5).any():
            if table.shape == (2, 2):
                res = stats.fisher_exact(table)
            else:
                method = stats.MonteCarloMethod(n_resamples=_FISHER_RESAMPLES,
                                                rng=np.random.default_rng(random_state))
                res = stats.fisher_exact(table, method=method)
            rows.append((attribute, len(kept), "fisher-exact", float(res.statistic),
                         float(res.pvalue), _neg_log10(float(res.pvalue))))
        else:
            res = stats.chi2_contingency(table)
            rows.append((attribute, len(kept), "chi-square", float(res.statistic),
                         float(res.pvalue), chi2_neg_log10_p(res.statistic, res.dof)))
    out = pd.DataFrame(rows, columns=["attribute", "n_groups", "test", "stat", "p",
                                      "neg_log10_p"])
    out = out.set_index("attribute")
    out["q"] = fdr(out["p"], fdr_method)
    return out
