"""The attribute-importance study: every analysis on every response, side by side.

``run_study(outcomes, attributes, schema)`` joins per-query outcomes to the attributes of the
query identities, encodes them (:mod:`.design`), and for each response (AP, rank-1 hit, each
ΔAP column) runs the GLM Wald tests (:mod:`.glm`), forest permutation importance (:mod:`.forest`),
SHAP (:mod:`.shap_values`) and hypothesis tests (:mod:`.tests_stats`). Scores become ranks and
the consensus is the mean rank over methods (:mod:`.consensus`). ΔAP columns also get a direct
ranking of the ablated groups by mean ΔAP. When the ΔAP columns cover every attribute (a full
expert ablation of a MoSAIC-ReID model), the default consensus is the *ablation* consensus: what
switching each attribute's experts off costs (``consensus="ablation"``; see ``run_study``).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import statsmodels.api as sm

from reid_explain._util.io import atomic_path, strict_json
from reid_explain.data.attributes import NO_CLASS, resolve_schema
from reid_explain.data.schema import AttributeSchema
from reid_explain.errors import InputError

from . import plots as figures
from .consensus import consensus_ranking, method_ranks
from .design import (
    DELTA_PREFIX,
    AttributeDesign,
    Missing,
    encode_attributes,
    prepare_outcomes,
    query_attributes,
)
from .forest import ForestFit, forest_importance
from .glm import GlmFit, fit_glm, group_codes
from .shap_values import ShapFit, tree_shap
from .tests_stats import FDR_METHOD, contingency_tests, continuous_tests, fdr

__all__ = ["AttributeStudy", "ResponseAnalysis", "ablation_scores", "delta_ranking", "run_study",
           "STUDY_KIND"]

#: ``summary.json``'s ``kind``; ``save`` only replaces a directory that carries it
STUDY_KIND = "reid_explain.attribute_study"

#: methods entering the consensus, per response kind
METHODS = {
    "fraction": ("glm", "permutation", "shap", "rank_test", "mean_test"),
    "delta": ("glm", "permutation", "shap", "rank_test", "mean_test"),
    "binary": ("glm", "permutation", "shap", "contingency"),
}

#: fewest identities per attribute level for a confirmatory reading: identity-clustered
#: standard errors and identity-held-out forest folds both rest on the number of identities,
#: not queries, and with under 10 per level one identity moves a level's effect by over 10 %
#: of its weight (docs/attribute_study.md, "Sample size")
MIN_IDENTITIES = 10

#: ``run_study(consensus=...)``: "auto" = "ablation" when ΔAP columns cover every attribute
Consensus = Literal["auto", "responses", "ablation"]


@dataclass
class ResponseAnalysis:
    """Every analysis of one response; ``table`` has one row per attribute."""

    name: str
    kind: str
    glm: GlmFit
    forest: ForestFit
    shap: ShapFit
    tests: pd.DataFrame
    scores: pd.DataFrame   # attribute × method, larger = more important
    ranks: pd.DataFrame    # attribute × method, 1 = most important
    table: pd.DataFrame


@dataclass
class AttributeStudy:
    """Result of :func:`run_study`.

    ``table``: one row per attribute (consensus order), every method's statistics for the
    consensus responses as ``"<response>.<method>.<stat>"`` columns, then the consensus.
    ``ranking``: the consensus ranking (``attribute``, ``consensus_rank``, ``mean_rank``,
    ``best_rank`` and each ``"<response>.<method>"`` rank, or with the ablation consensus each
    ``"ablation.<method>"`` rank). ``delta_ranking``: ablated expert groups by mean ΔAP (None
    without ΔAP columns). ``response_ranking``: the AP/hit consensus, whichever ``ranking`` is.
    """

    design: AttributeDesign
    outcomes: pd.DataFrame
    analyses: dict[str, ResponseAnalysis]
    table: pd.DataFrame
    ranking: pd.DataFrame
    delta_ranking: pd.DataFrame | None
    config: dict
    dropped: dict[str, str] = field(default_factory=dict)
    response_ranking: pd.DataFrame | None = None
    #: per attribute: identities in its rarest observed level (see :data:`MIN_IDENTITIES`)
    support: dict[str, int] = field(default_factory=dict)
    #: warnings of the fits (statsmodels, scipy, sklearn and the study's own), each once
    notes: list[str] = field(default_factory=list)
    #: bootstrap intervals of the consensus ranks over identities, once
    #: :func:`.rank_intervals.add_rank_intervals` ran
    rank_intervals: Any = None
    #: the keyword arguments ``run_study`` was called with (bootstrap draws repeat them)
    options: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def thin(self) -> dict[str, int]:
        """Attributes with a level seen in fewer than ``config["min_identities"]`` identities,
        and that count."""
        return thin_levels(self.support, self.config.get("min_identities", MIN_IDENTITIES))

    @property
    def exploratory(self) -> bool:
        """True when some attribute is :attr:`thin`: the ranking is a lead, not a finding."""
        return bool(self.thin)

    @property
    def order(self) -> list[str]:
        """Attributes from most to least important (consensus)."""
        return list(self.ranking["attribute"])

    def summary(self) -> dict:
        return {
            "kind": STUDY_KIND,
            "n_queries": len(self.outcomes),
            "n_identities": int(self.outcomes["pid"].nunique()),
            "responses": {k: a.kind for k, a in self.analyses.items()},
            "consensus_responses": self.config["consensus_responses"],
            "consensus": self.config.get("consensus", "responses"),
            "consensus_rule": ("mean rank over (response, method) columns; ties: best rank, "
                               "schema" if self.config.get("consensus") != "ablation" else
                               "mean rank over the ablation methods (mean ΔAP, its identity-"
                               "clustered t); ties: best rank, schema"),
            "response_ranking": (None if self.response_ranking is None
                                 else list(self.response_ranking["attribute"])),
            "ranking": self.order,
            "dropped": self.dropped,
            "reference_levels": self.design.reference,
            "fdr_method": self.config["fdr_method"],
            "config": self.config,
            "delta_ranking": (None if self.delta_ranking is None
                              else self.delta_ranking.to_dict(orient="records")),
            "exploratory": self.exploratory,
            "min_identities": self.config.get("min_identities", MIN_IDENTITIES),
            "support": self.support,
            "notes": self.notes,
            "rank_intervals": (None if self.rank_intervals is None
                               else self.rank_intervals.to_json()),
        }

    def save(self, directory: str | os.PathLike, *, plots: bool = True) -> Path:
        """Write tables, GLM summaries, SHAP values, ``summary.json`` and PNGs, atomically.

        The whole directory appears at once; an existing directory is replaced only if it is an
        earlier study output (its ``summary.json`` says so), never an unrelated folder.
        """
        out = Path(directory)
        if out.exists():
            marker = out / "summary.json"
            try:
                ours = json.loads(marker.read_text())["kind"] == STUDY_KIND
            except (OSError, ValueError, KeyError, TypeError):
                ours = False
            if not (ours or (out.is_dir() and not any(out.iterdir()))):
                raise InputError(f"{out}: exists and is not an attribute-study output; "
                                 "choose a new or empty directory")
        with atomic_path(out) as tmp:
            tmp.mkdir()
            self.table.to_csv(tmp / "table.csv")
            self.ranking.to_csv(tmp / "ranking.csv", index=False)
            if self.rank_intervals is not None:
                self.rank_intervals.table.to_csv(tmp / "rank_intervals.csv", index=False)
            if self.delta_ranking is not None:
                self.delta_ranking.to_csv(tmp / "delta_ranking.csv", index=False)
            for name, analysis in self.analyses.items():
                sub = tmp / "responses" / name
                sub.mkdir(parents=True)
                analysis.table.to_csv(sub / "table.csv")
                (sub / "glm_summary.txt").write_text(
                    str(analysis.glm.results.summary()) if analysis.glm.results is not None
                    else "GLM not fitted:\n" + analysis.glm.importance["note"].to_string())
                shap_frame = pd.DataFrame(analysis.shap.values, columns=analysis.shap.features
                                          .columns)
                shap_frame.insert(0, "pid", self.outcomes["pid"].to_numpy())
                shap_frame.insert(0, "query", self.outcomes["query"].to_numpy())
                shap_frame.to_csv(sub / "shap_values.csv", index=False)
            (tmp / "summary.json").write_text(strict_json(self.summary()))
            if plots:
                self._plots(tmp / "plots")
        return out

    def _plots(self, folder: Path) -> None:
        folder.mkdir()
        figures.consensus_bars(self.ranking, folder / "consensus.png")
        for name, analysis in self.analyses.items():
            scores = analysis.scores.loc[[a for a in self.order if a in analysis.scores.index]]
            figures.importance_bars(scores, folder / f"{name}_importance.png",
                                    title=f"{name}: importance per method")
            figures.shap_beeswarm(analysis.shap.values, analysis.shap.features,
                                  folder / f"{name}_shap_beeswarm.png", title=name)
        if self.delta_ranking is not None:
            figures.delta_bars(self.delta_ranking, folder / "delta_ap.png")


def level_support(design: AttributeDesign, pids: np.ndarray) -> dict[str, int]:
    """Per attribute: the number of distinct identities in its rarest observed level."""
    out = {}
    for attribute in design.attributes:
        counts = pd.Series(pids).groupby(design.features[attribute].to_numpy()).nunique()
        out[attribute] = int(counts.min()) if len(counts) else 0
    return out


def thin_levels(support: dict[str, int], min_identities: int) -> dict[str, int]:
    """The attributes of ``support`` whose rarest level has fewer than ``min_identities``."""
    return {a: n for a, n in support.items() if n < min_identities}


def _collected_notes(caught: Sequence[warnings.WarningMessage]) -> list[str]:
    """Each distinct warning once, with how often it was raised, in first-seen order."""
    counts: dict[str, int] = {}
    for w in caught:
        text = f"{w.category.__name__}: {str(w.message).strip()}"
        counts[text] = counts.get(text, 0) + 1
    return [text if n == 1 else f"{text} (x{n})" for text, n in counts.items()]


def _analyse(name: str, kind: str, y: np.ndarray, pids: np.ndarray, design: AttributeDesign,
             cfg: dict) -> ResponseAnalysis:
    glm = fit_glm(design, y, pids, kind)
    n_levels = [len(design.levels[a]) for a in design.attributes]
    forest = forest_importance(design.features, y, pids, kind, n_levels,
                               n_estimators=cfg["n_estimators"],
                               min_samples_leaf=cfg["min_samples_leaf"],
                               n_splits=cfg["n_splits"], n_repeats=cfg["n_repeats"],
                               random_state=cfg["random_state"], n_jobs=cfg["n_jobs"])
    shap_fit = tree_shap(forest.model, design.features, n_levels)
    attrs = design.attributes
    g = glm.importance.loc[attrs].copy()
    g["q"] = fdr(g["p"], cfg["fdr_method"])
    cols: dict[str, pd.Series] = {
        "glm.chi2": g["chi2"], "glm.df": g["df"], "glm.p": g["p"], "glm.q": g["q"],
        "glm.ame": g["ame"], "glm.note": g["note"],
        "permutation.mean": forest.importance.loc[attrs, "mean"],
        "permutation.std": forest.importance.loc[attrs, "std"],
        "shap.mean_abs": shap_fit.importance.loc[attrs],
    }
    scores = {"glm": g["neg_log10_p"], "permutation": forest.importance.loc[attrs, "mean"],
              "shap": shap_fit.importance.loc[attrs]}
    if kind == "binary":
        tests = contingency_tests(design.features, y, random_state=cfg["random_state"],
                                  fdr_method=cfg["fdr_method"])
        for stat in ("test", "stat", "p", "q"):
            cols[f"contingency.{stat}"] = tests[stat]
        scores["contingency"] = tests["neg_log10_p"]
    else:
        tests = continuous_tests(design.features, y, fdr_method=cfg["fdr_method"])
        for which in ("rank", "mean"):
            cols[f"{which}_test.test"] = tests[f"{which}_test"]
            for stat in ("stat", "p", "q"):
                cols[f"{which}_test.{stat}"] = tests[f"{which}_{stat}"]
            scores[f"{which}_test"] = tests[f"{which}_neg_log10_p"]
    score_frame = pd.DataFrame(scores).loc[attrs, list(METHODS[kind])]
    ranks = method_ranks(score_frame)
    table = pd.DataFrame(cols).loc[attrs]
    for method in ranks.columns:
        table[f"{method}.rank"] = ranks[method]
    per_response = consensus_ranking(ranks, attrs).set_index("attribute")
    table["consensus.mean_rank"] = per_response["mean_rank"]
    table["consensus.rank"] = per_response["consensus_rank"]
    table.index.name = "attribute"
    return ResponseAnalysis(name, kind, glm, forest, shap_fit, tests, score_frame, ranks, table)


def delta_ranking(outcomes: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Ablated expert groups ranked by mean ΔAP, with identity-clustered 95% intervals.

    The mean and its cluster-robust standard error come from an intercept-only OLS
    (``cov_type="cluster"`` by pid); ``p`` tests mean ΔAP = 0.
    """
    groups = group_codes(outcomes["pid"].to_numpy())
    rows = []
    for column in columns:
        d = outcomes[column].to_numpy(float)
        with warnings.catch_warnings():  # a constant ΔAP (group never matters): se 0, p NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            res = sm.OLS(d, np.ones((len(d), 1))).fit(cov_type="cluster",
                                                      cov_kwds={"groups": groups})
        low, high = np.asarray(res.conf_int())[0]
        name = column[len(DELTA_PREFIX):] if column.startswith(DELTA_PREFIX) else column
        rows.append((name, column, float(res.params[0]), float(res.bse[0]), float(low),
                     float(high), float(res.pvalues[0]), len(d)))
    table = pd.DataFrame(rows, columns=["group", "column", "mean", "se", "ci_low", "ci_high",
                                        "p", "n"])
    table = table.sort_values("mean", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table


def ablation_scores(delta: pd.DataFrame, attributes: Sequence[str]) -> pd.DataFrame | None:
    """Per attribute, the ablation methods' scores (larger = more important), or None unless every
    attribute has a ΔAP group in ``delta`` (a :func:`delta_ranking` table).

    ``mean_delta_ap``: the mean AP lost by switching the attribute's experts off; ``t``: that mean
    over its identity-clustered standard error (a one-sided test's statistic, so a group that
    *helps* when removed ranks low, and a NaN from a constant ΔAP ranks last).
    """
    by_group = delta.set_index("group")
    if not set(attributes) <= set(by_group.index):
        return None
    rows = by_group.loc[list(attributes)]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = rows["mean"].to_numpy(float) / rows["se"].to_numpy(float)
    t[~np.isfinite(t)] = np.nan
    return pd.DataFrame({"ablation.mean_delta_ap": rows["mean"].to_numpy(float), "ablation.t": t},
                        index=pd.Index(list(attributes), name="attribute"))


def run_study(outcomes: pd.DataFrame, attributes: pd.DataFrame,
              schema: str | AttributeSchema | None = None, *, split: str | None = None,
              ap: str | None = "ap", hit: str | None = None,
              delta_columns: Sequence[str] | None = None,
              consensus_responses: Sequence[str] | None = None,
              consensus: Consensus = "auto", missing: Missing = "error",
              no_class: str | None = NO_CLASS, n_estimators: int = 100,
              min_samples_leaf: int = 5, n_splits: int = 5,
              n_repeats: int = 5, random_state: int = 0, n_jobs: int | None = 1,
              fdr_method: str = FDR_METHOD,
              min_identities: int = MIN_IDENTITIES) -> AttributeStudy:
    """Run the attribute-importance study on per-query outcomes of any model.

    ``outcomes``: one row per query with ``pid``, ``ap`` (in [0, 1]), a rank-1 hit column
    (``hit``/``hit@1``/``rank1``, 0/1) and optionally ``delta_ap_<group>`` ΔAP columns (e.g. from
    :func:`~reid_explain.attributes.outcomes.per_query_outcomes` or an expert ablation).
    ``attributes``: the identities' labels, tidy or wide (see
    :func:`~reid_explain.attributes.design.query_attributes`); ``schema`` defaults to the
    table's. ``consensus_responses`` default to AP and hit (the ΔAP columns when there is
    neither).

    A colour with several classes set gets one indicator per set class; one with no class set
    (the official Market-1501 files have such identities) is the state ``no_class``
    (``"none"``), so every query is kept; ``no_class=None`` makes it missing, and ``missing``
    then decides (``"error"``, or ``"drop"`` those queries).

    ``consensus`` chooses what ``study.ranking`` ranks by. ``"responses"``: the mean rank over
    every (response, method) column of ``consensus_responses`` ("which attribute values does
    accuracy depend on"). ``"ablation"``: the mean rank over the ablation methods of
    :func:`ablation_scores` (mean ΔAP and its clustered t: "what does the model lose without the
    attribute's experts"); it needs a ``delta_ap_<attribute>`` column for every analysed
    attribute. ``"auto"`` (default): ``"ablation"`` when those columns are all there and
    ``consensus_responses`` is not given, else ``"responses"``. ``study.response_ranking`` is
    always the responses' consensus.

    Sample size: an attribute level seen in fewer than ``min_identities`` identities
    (:data:`MIN_IDENTITIES`) makes the study *exploratory* (``study.exploratory``,
    ``study.support``); it still runs. Warnings of the fits are collected, each once, in
    ``study.notes`` and raised as one warning.
    """
    if consensus not in ("auto", "responses", "ablation"):
        raise InputError(f"consensus must be 'auto', 'responses' or 'ablation', got {consensus!r}")
    table, responses = prepare_outcomes(outcomes, ap=ap, hit=hit, delta_columns=delta_columns)
    chosen = resolve_schema(schema if schema is not None else attributes.attrs.get("schema"),
                            None, attributes.attrs.get("source", "attributes"))
    values, keep = query_attributes(attributes, table["pid"].to_numpy(), chosen, split=split,
                                    missing=missing, no_class=no_class)
    table = table[keep].reset_index(drop=True)
    design = encode_attributes(values, chosen)
    pids = table["pid"].to_numpy()
    dropped = dict(design.dropped)
    deltas = [n for n, k in responses.items() if k == "delta"]  # constant ones rank too
    for name in list(responses):
        if table[name].nunique() < 2:
            dropped[f"response:{name}"] = f"constant ({table[name].iloc[0]} for every query)"
            warnings.warn(f"response {name!r} is constant; not analysed", UserWarning,
                          stacklevel=2)
            del responses[name]
        elif responses[name] == "binary" and table.groupby(name)["pid"].nunique().min() < 2:
            rare = table.groupby(name)["pid"].nunique().idxmin()
            dropped[f"response:{name}"] = (f"outcome {rare} comes from a single identity: no "
                                           "identity-held-out analysis can learn it")
            warnings.warn(f"response {name!r}: {dropped[f'response:{name}']}; not analysed",
                          UserWarning, stacklevel=2)
            del responses[name]
    if not responses:
        raise InputError("outcomes: every response is constant; nothing to explain")
    primary = [n for n, k in responses.items() if k != "delta"]
    delta_table = delta_ranking(table, deltas) if deltas else None
    ablation = (None if delta_table is None
                else ablation_scores(delta_table, design.attributes))
    if consensus == "auto":
        consensus = ("ablation" if ablation is not None and consensus_responses is None
                     else "responses")
    if consensus == "ablation" and ablation is None:
        have = [] if delta_table is None else list(delta_table["group"])
        raise InputError("consensus='ablation' needs a delta_ap_<attribute> column for every "
                         f"analysed attribute; missing: "
                         f"{[a for a in design.attributes if a not in have]}")
    if consensus_responses is None:
        consensus_responses = primary or list(responses)
    unknown = [r for r in consensus_responses if r not in responses]
    if unknown:
        raise InputError(f"consensus_responses {unknown} are not analysed responses "
                         f"({list(responses)})")
    cfg = {"n_estimators": n_estimators, "min_samples_leaf": min_samples_leaf,
           "n_splits": n_splits, "n_repeats": n_repeats, "random_state": random_state,
           "n_jobs": n_jobs, "fdr_method": fdr_method, "split": split, "missing": missing,
           "no_class": no_class,
           "schema": chosen.name, "consensus_responses": list(consensus_responses),
           "consensus": consensus, "min_identities": min_identities}
    with warnings.catch_warnings(record=True) as caught:
        # every warning recorded: one filter, not "always" in front of the ~20 the libraries
        # installed (unreachable behind it, yet sklearn's joblib wrapper re-applies each of
        # them for every tree of every forest fit and prediction)
        warnings.resetwarnings()
        warnings.simplefilter("always")
        analyses = {name: _analyse(name, kind, table[name].to_numpy(), pids, design, cfg)
                    for name, kind in responses.items()}
    notes = _collected_notes(caught)
    support = level_support(design, pids)
    thin = thin_levels(support, min_identities)
    if thin:
        notes.insert(0, f"exploratory: {len(thin)} of {len(support)} attributes have a level "
                        f"seen in fewer than {min_identities} identities ("
                        + ", ".join(f"{a} {n}" for a, n in thin.items())
                        + "); read the ranking as a lead, not a finding")
    if notes:  # one short line on the terminal; every note, once each, in study.notes
        more = len(notes) - 1
        warnings.warn("attribute study: " + notes[0][:300]
                      + (f" (+{more} more note{'s' * (more > 1)} from the fits in study.notes "
                         "and summary.json)" if more else ""), UserWarning, stacklevel=2)

    ranks = pd.concat({r: analyses[r].ranks for r in consensus_responses}, axis=1)
    ranks.columns = [f"{r}.{m}" for r, m in ranks.columns]
    response_ranking = consensus_ranking(ranks, design.attributes)
    ranking = response_ranking
    if consensus == "ablation":
        ranking = consensus_ranking(method_ranks(ablation), design.attributes)
    wide = pd.concat({r: analyses[r].table.drop(columns=["consensus.mean_rank",
                                                         "consensus.rank"])
                      for r in consensus_responses}, axis=1)
    wide.columns = [f"{r}.{c}" for r, c in wide.columns]
    info = pd.DataFrame({
        "kind": [chosen[a].kind.value for a in design.attributes],
        "reference": [design.reference[a] for a in design.attributes],
        "glm_columns": ["; ".join(design.blocks[a]) for a in design.attributes],
        "levels": [len(design.levels[a]) for a in design.attributes],
    }, index=pd.Index(design.attributes, name="attribute"))
    by_attr = ranking.set_index("attribute")
    full = pd.concat([info, wide], axis=1).loc[list(by_attr.index)]
    if consensus == "ablation":
        ablation_ranks = method_ranks(ablation)
        for method in ablation.columns:
            full[method] = ablation[method]
            full[f"{method}.rank"] = ablation_ranks[method]
        full["responses.consensus.rank"] = response_ranking.set_index("attribute")[
            "consensus_rank"]
    full["consensus.mean_rank"] = by_attr["mean_rank"]
    full["consensus.rank"] = by_attr["consensus_rank"]
    options = {"schema": schema, "split": split, "ap": ap, "hit": hit,
               "delta_columns": delta_columns, "consensus_responses": consensus_responses,
               "consensus": cfg["consensus"], "missing": missing, "no_class": no_class,
               "n_estimators": n_estimators, "min_samples_leaf": min_samples_leaf,
               "n_splits": n_splits, "n_repeats": n_repeats, "random_state": random_state,
               "n_jobs": n_jobs, "fdr_method": fdr_method, "min_identities": min_identities}
    return AttributeStudy(design, table, analyses, full, ranking, delta_table, cfg, dropped,
                          response_ranking, support=support, notes=notes, options=options)
