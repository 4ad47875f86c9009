"""Attribute-importance study: which semantic attributes a ReID model's accuracy depends on.

The unit of analysis is the query. Given per-query outcomes (AP, rank-1 hit, optionally ΔAP per
switched-off expert group) and the attribute labels of the query identities, the study fits
identity-clustered GLMs (statsmodels), forest permutation importance on identity-held-out folds
(scikit-learn), tree SHAP values (shap) and per-attribute hypothesis tests (scipy/statsmodels,
Benjamini–Hochberg FDR), and ranks attributes by the mean rank over those methods.

It needs no experts: :func:`per_query_outcomes` turns any model's query/gallery features into
the outcome table. See ``docs/attribute_study.md``.

    >>> from reid_explain.attributes import per_query_outcomes, run_study
    >>> outcomes = per_query_outcomes(q_feats, g_feats, q_pids, g_pids, q_camids, g_camids)
    >>> study = run_study(outcomes, load_attributes("market_attribute.mat"), split="test")
    >>> study.ranking; study.table; study.save("attribute_study/")
"""

from __future__ import annotations

from .causal import CausalAudit, agreement, causal_audit
from .consensus import consensus_ranking, method_ranks
from .design import (
    DELTA_PREFIX,
    AttributeDesign,
    encode_attributes,
    prepare_outcomes,
    query_attributes,
)
from .forest import ForestFit, forest_importance
from .glm import GlmFit, fit_glm, glm_exog
from .outcomes import per_query_outcomes
from .pair_reliance import PairReliance, pair_reliance
from .rank_intervals import RankIntervals, rank_intervals
from .shap_values import ShapFit, tree_shap
from .study import AttributeStudy, ResponseAnalysis, delta_ranking, run_study
from .tests_stats import FDR_METHOD, contingency_tests, continuous_tests

__all__ = [
    "DELTA_PREFIX",
    "FDR_METHOD",
    "AttributeDesign",
    "AttributeStudy",
    "CausalAudit",
    "ForestFit",
    "GlmFit",
    "PairReliance",
    "RankIntervals",
    "ResponseAnalysis",
    "ShapFit",
    "agreement",
    "causal_audit",
    "consensus_ranking",
    "contingency_tests",
    "continuous_tests",
    "delta_ranking",
    "encode_attributes",
    "fit_glm",
    "forest_importance",
    "glm_exog",
    "method_ranks",
    "pair_reliance",
    "per_query_outcomes",
    "rank_intervals",
    "prepare_outcomes",
    "query_attributes",
    "run_study",
    "tree_shap",
]
