"""GLM importance: one statsmodels GLM per response, a joint Wald test per attribute.

Families (all fitted by ``statsmodels.api.GLM`` with cluster-robust standard errors by identity,
``fit(cov_type="cluster", cov_kwds={"groups": pid codes})``, because queries of one identity
share its attributes and are not independent):

* ``binary`` (rank-1 hit): Binomial family, logit link.
* ``fraction`` (AP in [0, 1]): *fractional logit* (Papke & Wooldridge 1996): the Binomial
  family with the continuous response, a quasi-likelihood; the dispersion is Pearson's
  (``scale="X2"``), which the cluster-robust sandwich does not depend on.
* ``delta`` (ΔAP in [-1, 1]): Gaussian family, identity link (linear regression).

An attribute's importance is the Wald test of its whole block of coefficients (jointly for a
multiclass one) against zero: chi2 statistic, df = block size, p-value. Average marginal effects
(``get_margeff(at="overall", dummy=True)``, the mean change of the expected response when a
column goes 0 → 1) are reported per column and, per attribute, the largest in absolute value.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
import statsmodels.api as sm

from .design import AttributeDesign
from .tests_stats import chi2_neg_log10_p

__all__ = ["GlmFit", "aliased_columns", "fit_glm", "glm_exog", "glm_family", "GLM_FAMILIES"]

#: response kind -> (statsmodels family factory, fit scale)
GLM_FAMILIES = {
    "binary": (sm.families.Binomial, None),
    "fraction": (sm.families.Binomial, "X2"),
    "delta": (sm.families.Gaussian, None),
}


def glm_family(kind: str) -> tuple[sm.families.Family, str | None]:
    """The statsmodels family and fit ``scale`` used for a response kind."""
    factory, scale = GLM_FAMILIES[kind]
    return factory(), scale


def glm_exog(design: AttributeDesign) -> pd.DataFrame:
    """The GLM's regressors: a ``const`` column then the attribute columns in block order."""
    return sm.add_constant(design.X, has_constant="add")


def group_codes(pids: np.ndarray) -> np.ndarray:
    """Integer cluster labels, one per identity (what statsmodels' ``groups`` expects)."""
    return np.unique(np.asarray(pids), return_inverse=True)[1]


@dataclass
class GlmFit:
    """The fitted statsmodels results and the per-attribute Wald table."""

    results: sm.genmod.generalized_linear_model.GLMResultsWrapper | None
    importance: pd.DataFrame   # index attribute: chi2, df, p, neg_log10_p, ame, note
    margeff: pd.Series         # average marginal effect per column of the design
    aliased: dict[str, str]    # design column left out -> the columns it is a combination of


def aliased_columns(exog: pd.DataFrame, tol: float = 1e-8) -> dict[str, str]:
    """Columns that are linear combinations of earlier ones (a rank-deficient design), each
    with the earlier columns it is made of. Earlier columns win, so an attribute keeps its
    test and a later one that duplicates it (e.g. two near-constant attributes set for the
    same identities) is reported as aliased rather than making the fit singular."""
    kept: list[str] = []
    aliased: dict[str, str] = {}
    values = exog.to_numpy(dtype=float)
    for j, column in enumerate(exog.columns):
        basis = values[:, [exog.columns.get_loc(c) for c in kept]]
        target = values[:, j]
        if basis.shape[1]:
            coef, *_ = np.linalg.lstsq(basis, target, rcond=None)
            residual = target - basis @ coef
        else:
            coef, residual = np.zeros(0), target
        if np.linalg.norm(residual) <= tol * max(1.0, np.linalg.norm(target)):
            used = [c for c, b in zip(kept, coef, strict=True) if abs(b) > 1e-6]
            aliased[column] = " + ".join(used) if used else "nothing (all zero)"
        else:
            kept.append(column)
    return aliased


def _unfitted(design: AttributeDesign, note: str, aliased: dict[str, str]) -> GlmFit:
    rows = [(a, np.nan, len(cols), np.nan, np.nan, np.nan, note)
            for a, cols in design.blocks.items()]
    importance = pd.DataFrame(rows, columns=["attribute", "chi2", "df", "p", "neg_log10_p",
                                             "ame", "note"]).set_index("attribute")
    return GlmFit(None, importance, pd.Series(np.nan, index=design.X.columns), aliased)


def fit_glm(design: AttributeDesign, y: np.ndarray, pids: np.ndarray, kind: str) -> GlmFit:
    """Fit the response's GLM with identity-clustered errors and test each attribute block.

    A degenerate design never stops the study: columns aliased with earlier ones are left
    out of the fit (an attribute with none left gets no test, with a note naming what it is
    aliased with), and a fit that still fails gives every attribute a NaN row with the reason.
    Either case warns.
    """
    exog = glm_exog(design)
    aliased = aliased_columns(exog)
    if aliased:
        warnings.warn("GLM: design columns aliased with earlier ones are left out of the fit: "
                      + "; ".join(f"{c} = {w}" for c, w in aliased.items()), UserWarning,
                      stacklevel=3)
        exog = exog.drop(columns=list(aliased))
    family, scale = glm_family(kind)
    model = sm.GLM(np.asarray(y, dtype=float), exog, family=family)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            results = model.fit(scale=scale, cov_type="cluster",
                                cov_kwds={"groups": group_codes(pids)})
    except (np.linalg.LinAlgError, ValueError) as exc:
        note = f"GLM fit failed ({type(exc).__name__}: {exc})"
        warnings.warn(f"GLM: {note}; no GLM test for any attribute", UserWarning, stacklevel=3)
        return _unfitted(design, note, aliased)
    fitted = [c for c in design.X.columns if c not in aliased]
    try:
        me = results.get_margeff(at="overall", dummy=True)
        margeff = pd.Series(np.asarray(me.margeff), index=fitted).reindex(design.X.columns)
    except Exception:  # margeff is a convenience; a degenerate design must not stop the study
        margeff = pd.Series(np.nan, index=design.X.columns)
    n_groups = len(np.unique(pids))
    if n_groups <= exog.shape[1]:
        warnings.warn(f"GLM: {n_groups} identities for {exog.shape[1]} coefficients; the "
                      "cluster-robust covariance is rank-deficient and the Wald tests are "
                      "unreliable (use more identities or fewer attributes)", UserWarning,
                      stacklevel=3)
    names = list(exog.columns)
    rows = []
    for attribute, block in design.blocks.items():
        cols = [c for c in block if c not in aliased]
        note = "; ".join(f"{c} aliased with {aliased[c]}" for c in block if c in aliased)
        if not cols:
            rows.append((attribute, np.nan, 0, np.nan, np.nan, np.nan,
                         note or "no column"))
            continue
        restriction = np.zeros((len(cols), len(names)))
        for i, c in enumerate(cols):
            restriction[i, names.index(c)] = 1.0
        df = len(cols)
        ame = margeff[cols].to_numpy()
        ame_max = float(ame[int(np.argmax(np.abs(np.nan_to_num(ame))))])
        try:
            wald = results.wald_test(restriction, use_f=False, scalar=True)
        except (ValueError, np.linalg.LinAlgError) as exc:
            # NaN or singular covariance: separation or too few identities
            warnings.warn(f"GLM: no Wald test for attribute {attribute!r} ({exc}); it ranks "
                          "last for the GLM", UserWarning, stacklevel=3)
            rows.append((attribute, np.nan, df, np.nan, np.nan, ame_max,
                         f"no Wald test ({exc})"))
            continue
        chi2 = float(wald.statistic)
        neg_log10_p = chi2_neg_log10_p(chi2, df)  # p itself underflows for strong effects
        rows.append((attribute, chi2, df, float(wald.pvalue), neg_log10_p, ame_max, note))
    importance = pd.DataFrame(rows, columns=["attribute", "chi2", "df", "p", "neg_log10_p",
                                             "ame", "note"]).set_index("attribute")
    return GlmFit(results, importance, margeff, aliased)
