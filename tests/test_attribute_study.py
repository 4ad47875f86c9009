"""Attribute-importance study (issue 7): library equality, planted orders, .mat end to end.

Every number is real: studies run on simulated per-query outcomes whose attribute effects are
planted, and each analysis is checked against a direct statsmodels / sklearn / shap / scipy call.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import shap
import statsmodels.api as sm
import statsmodels.formula.api as smf
from scipy import stats
from scipy.special import expit
from sklearn.inspection import permutation_importance
from statsmodels.stats.multitest import multipletests

from reid_explain.attributes import (
    encode_attributes,
    per_query_outcomes,
    query_attributes,
    run_study,
)
from reid_explain.attributes.cli import attributes_main
from reid_explain.data.attributes import load_attributes, save_attribute_mat
from reid_explain.data.schema import DUKEMTMC, MARKET1501, AttributeKind, AttributeSchema
from reid_explain.errors import InputError

XDIST_COST_S = 32  # seconds on 2 cores: pytest-xdist starts the longest files first

FAST = {"n_estimators": 40, "n_splits": 3, "n_repeats": 3}
TINY = {"n_estimators": 10, "n_splits": 2, "n_repeats": 1}


def _strengths(n: int) -> np.ndarray:
    """Planted effect sizes (SD of the attribute's term on the logit scale), decreasing."""
    return np.concatenate([[1.2, 1.0, 0.8], np.linspace(0.5, 0.05, n - 3)])


def simulate(order: list[str], schema: AttributeSchema = MARKET1501, n_ids: int = 300,
             per_id: int = 2, seed: int = 0, split: str = "test",
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-query AP/hit from a logistic model with planted attribute effects in ``order``.

    Each attribute's term has SD ``_strengths[rank]``: binary ±s with p = 1/2, multiclass with
    uniform classes and centred class effects scaled to SD s. Identity random effect SD 0.3,
    query noise SD 0.5; hit ~ Bernoulli(expit(eta + 0.5)).
    """
    rng = np.random.default_rng(seed)
    strength = dict(zip(order, _strengths(len(order)), strict=True))
    rows, eta = [], np.zeros(n_ids)
    for attribute in schema:
        s = strength[attribute.name]
        if attribute.kind is AttributeKind.MULTICLASS:
            effect = rng.normal(size=len(attribute.states))
            effect = (effect - effect.mean()) * s / (effect - effect.mean()).std()
            x = rng.integers(0, len(attribute.states), n_ids)
        else:
            effect, x = np.array([-s, s]), rng.integers(0, 2, n_ids)
        eta += effect[x]
        rows += [(split, p + 1, attribute.name, attribute.states[x[p]]) for p in range(n_ids)]
    tidy = pd.DataFrame(rows, columns=["split", "pid", "attribute", "value"])
    tidy.attrs["schema"] = schema.name
    eta += rng.normal(0, 0.3, n_ids)
    pid = np.repeat(np.arange(1, n_ids + 1), per_id)
    logit = eta[pid - 1] + rng.normal(0, 0.5, len(pid))
    outcomes = pd.DataFrame({"query": np.arange(len(pid)), "pid": pid, "ap": expit(logit),
                             "hit": (rng.random(len(pid)) < expit(logit + 0.5)).astype(int)})
    return outcomes, tidy


def _rho(planted: list[str], found: list[str]) -> float:
    return float(stats.spearmanr([planted.index(a) for a in found],
                                 np.arange(len(found))).statistic)


SECOND_ORDER = ["lower_color", "bag", "age", "hair", "upper_color", "hat", "clothes",
                "gender", "handbag", "sleeve", "backpack", "lower_length"]


@pytest.fixture(scope="module")
def planted():
    order = list(MARKET1501.names)
    outcomes, tidy = simulate(order, seed=0)
    return order, outcomes, tidy, run_study(outcomes, tidy, **FAST)


# --------------------------------------------------------------------------- planted orders

def test_consensus_follows_the_planted_order(planted):
    order, _, _, study = planted
    assert _rho(order, study.order) >= 0.8
    assert set(study.order[:3]) == set(order[:3])


def test_consensus_follows_a_second_planted_order():
    assert sorted(SECOND_ORDER) == sorted(MARKET1501.names)
    outcomes, tidy = simulate(SECOND_ORDER, seed=1)
    study = run_study(outcomes, tidy, **FAST)
    assert _rho(SECOND_ORDER, study.order) >= 0.8
    assert set(study.order[:3]) == set(SECOND_ORDER[:3])
    assert study.order[:3] != list(MARKET1501.names[:3])


# --------------------------------------------------------------------------- library equality

def _formula(design, outcomes: pd.DataFrame, response: str) -> tuple[str, pd.DataFrame]:
    data = design.values.copy()
    data[response] = outcomes[response].to_numpy()
    terms = [f"C({a}, Treatment(reference={design.reference[a]!r}))"
             for a in design.attributes]
    return f"{response} ~ " + " + ".join(terms), data


@pytest.mark.parametrize("response,family,scale", [
    ("ap", sm.families.Binomial, "X2"), ("hit", sm.families.Binomial, None)])
def test_glm_equals_a_direct_statsmodels_formula_fit(planted, response, family, scale):
    _, outcomes, _, study = planted
    design = study.design
    formula, data = _formula(design, study.outcomes, response)
    groups = pd.factorize(study.outcomes["pid"])[0]
    direct = smf.glm(formula, data, family=family()).fit(
        scale=scale, cov_type="cluster", cov_kwds={"groups": groups})
    ours = study.analyses[response].glm
    # same coefficients and cluster-robust errors, matched by level name
    for attribute, cols in design.blocks.items():
        term = f"C({attribute}, Treatment(reference={design.reference[attribute]!r}))"
        names = [f"{term}[T.{c.split('=', 1)[1]}]" for c in cols]
        np.testing.assert_allclose(ours.results.params[cols], direct.params[names], rtol=1e-6,
                                   atol=1e-9)
        np.testing.assert_allclose(ours.results.bse[cols], direct.bse[names], rtol=1e-6)
        r = np.zeros((len(names), len(direct.params)))
        for i, name in enumerate(names):
            r[i, list(direct.params.index).index(name)] = 1
        wald = direct.wald_test(r, use_f=False, scalar=True)
        table = study.analyses[response].table
        assert table.loc[attribute, "glm.chi2"] == pytest.approx(float(wald.statistic),
                                                                 rel=1e-6)
        assert table.loc[attribute, "glm.p"] == pytest.approx(float(wald.pvalue), rel=1e-5,
                                                              abs=1e-300)
        assert table.loc[attribute, "glm.df"] == len(names)
    np.testing.assert_allclose(ours.results.params["const"], direct.params["Intercept"],
                               rtol=1e-6)
    q = multipletests(study.analyses[response].table["glm.p"], method="fdr_bh")[1]
    np.testing.assert_allclose(study.analyses[response].table["glm.q"], q)


def test_reference_level_is_the_most_frequent_class(planted):
    study = planted[3]
    for attribute in ("age", "upper_color", "lower_color"):
        counts = study.design.values[attribute].value_counts()
        assert study.design.reference[attribute] == counts.idxmax()
        assert f"{attribute}={counts.idxmax()}" not in study.design.X.columns
    assert study.design.blocks["gender"] == ["gender=female"]
    assert study.design.reference["hat"] == "no"


@pytest.mark.parametrize("response,scoring", [("ap", "r2"), ("hit", "neg_brier_score")])
def test_permutation_importance_equals_sklearn(planted, response, scoring):
    study = planted[3]
    forest = study.analyses[response].forest
    X = study.design.features.to_numpy()
    y = study.outcomes[response].to_numpy()
    pids = study.outcomes["pid"].to_numpy()
    means = []
    for fold in forest.folds:
        direct = permutation_importance(fold.model, X[fold.test_index], y[fold.test_index],
                                        scoring=scoring, n_repeats=FAST["n_repeats"],
                                        random_state=0)
        np.testing.assert_array_equal(direct.importances, fold.result.importances)
        train = np.setdiff1d(np.arange(len(y)), fold.test_index)
        assert not set(pids[fold.test_index]) & set(pids[train])  # unseen identities
        means.append(direct.importances_mean)
    np.testing.assert_allclose(forest.importance["mean"], np.mean(means, axis=0))
    assert forest.scoring == scoring
    table = study.analyses[response].table
    np.testing.assert_allclose(table["permutation.mean"], np.mean(means, axis=0))


@pytest.mark.parametrize("response", ["ap", "hit"])
def test_shap_equals_a_direct_tree_explainer(planted, response):
    study = planted[3]
    fit = study.analyses[response]
    model = fit.forest.model
    encoded = model[:-1].transform(study.design.features.to_numpy())
    direct = np.asarray(shap.TreeExplainer(model[-1]).shap_values(encoded))
    if direct.ndim == 3:
        direct = direct[:, :, 1]
    np.testing.assert_allclose(fit.shap.column_values, direct)
    widths = [1 if len(study.design.levels[a]) == 2 else len(study.design.levels[a])
              for a in study.design.attributes]
    edges = np.cumsum([0, *widths])
    summed = np.stack([direct[:, a:b].sum(1) for a, b in zip(edges[:-1], edges[1:], strict=True)],
                      1)
    np.testing.assert_allclose(fit.shap.values, summed)
    np.testing.assert_allclose(fit.table["shap.mean_abs"], np.abs(summed).mean(0))
    predicted = (model.predict_proba(study.design.features.to_numpy())[:, 1]
                 if response == "hit" else model.predict(study.design.features.to_numpy()))
    np.testing.assert_allclose(fit.shap.values.sum(1) + fit.shap.base_value, predicted,
                               atol=1e-6)


def test_hypothesis_tests_equal_scipy_with_bh_fdr(planted):
    study = planted[3]
    y = study.outcomes["ap"].to_numpy()
    hit = study.outcomes["hit"].to_numpy()
    values = study.design.values
    ap_table = study.analyses["ap"].table
    hit_table = study.analyses["hit"].table
    groups = [y[values["gender"] == s] for s in ("male", "female")]
    mw = stats.mannwhitneyu(*groups, alternative="two-sided")
    assert ap_table.loc["gender", "rank_test.test"] == "mann-whitney"
    assert ap_table.loc["gender", "rank_test.p"] == pytest.approx(mw.pvalue, rel=1e-12)
    welch = stats.ttest_ind(*groups, equal_var=False)
    assert ap_table.loc["gender", "mean_test.p"] == pytest.approx(welch.pvalue, rel=1e-12)
    kw = stats.kruskal(*[y[values["age"] == s] for s in study.design.levels["age"]])
    assert ap_table.loc["age", "rank_test.test"] == "kruskal-wallis"
    assert ap_table.loc["age", "rank_test.p"] == pytest.approx(kw.pvalue, rel=1e-12)
    q = multipletests(ap_table["rank_test.p"], method="fdr_bh")[1]
    np.testing.assert_allclose(ap_table["rank_test.q"], q)
    chi = stats.chi2_contingency(pd.crosstab(values["hat"], hit).to_numpy())
    assert hit_table.loc["hat", "contingency.test"] == "chi-square"
    assert hit_table.loc["hat", "contingency.p"] == pytest.approx(chi.pvalue, rel=1e-12)


# --------------------------------------------------------------------------- design policies

def test_multi_hot_colours_and_wide_input_encode_alike():
    tidy = pd.DataFrame(
        [("test", p, "upper_color", c) for p, c in [(1, "red"), (2, "blue"), (3, "red"),
                                                     (4, "blue"), (5, "red")]]
        + [("test", 4, "upper_color", "red")]  # pid 4 is multi-hot: blue and red
        + [("test", p, a.name, a.states[0 if a.name == "lower_color" else p % 2])
           for p in range(1, 6) for a in MARKET1501 if a.name != "upper_color"],
        columns=["split", "pid", "attribute", "value"])
    tidy.attrs["schema"] = "market1501"
    values, keep = query_attributes(tidy, [1, 4, 5, 2], MARKET1501)
    assert keep.all() and values.loc[1, "upper_color"] == "red|blue"
    wide = values.assign(pid=[1, 4, 5, 2])
    again, _ = query_attributes(wide, [1, 4, 5, 2], MARKET1501)
    pd.testing.assert_frame_equal(values, again)
    with pytest.warns(UserWarning, match="constant"):
        design = encode_attributes(values, MARKET1501)
    assert design.reference["upper_color"] == "red"  # set for 3 of 4 queries
    assert design.X["upper_color=blue"].tolist() == [0, 1, 0, 1]
    assert design.levels["upper_color"] == ["red", "blue", "red|blue"]
    assert "lower_color" in design.dropped  # every pid got the same colour


@pytest.mark.filterwarnings("ignore:GLM:UserWarning")
def test_bad_inputs_are_named():
    outcomes, tidy = simulate(list(MARKET1501.names), n_ids=40, seed=3)
    with pytest.raises(InputError, match=r"'ap'.*NaN.*queries \[5\]"):
        run_study(outcomes.assign(ap=outcomes["ap"].where(outcomes["query"] != 5)), tidy)
    with pytest.raises(InputError, match="'hit' must be 0 or 1"):
        run_study(outcomes.assign(hit=outcomes["hit"] + 1), tidy)
    with pytest.raises(InputError, match="missing column 'pid'"):
        run_study(outcomes.drop(columns="pid"), tidy)
    unlabelled = pd.concat([outcomes, outcomes.tail(2).assign(pid=999, query=[80, 81])])
    with pytest.raises(InputError, match=r"absent from the attribute table: \[999\]"):
        run_study(unlabelled, tidy)
    both = pd.concat([tidy, tidy.assign(split="train")])
    both.attrs["schema"] = "market1501"
    with pytest.raises(InputError, match="pass split="):
        run_study(outcomes, both)
    with pytest.warns(UserWarning, match="dropping 2 of 82 queries"):
        study = run_study(unlabelled, both, split="test", missing="drop", **TINY)
    assert len(study.outcomes) == 80
    constant = tidy.copy()
    constant.loc[constant["attribute"] == "hat", "value"] = "no"
    with pytest.warns(UserWarning, match="'hat' is constant"):
        study = run_study(outcomes, constant, **TINY)
    assert "hat" not in study.order and "hat" in study.dropped


def test_a_degenerate_design_is_reported_per_attribute_not_fatal():
    """Aliased attributes made statsmodels' clustered fit raise LinAlgError (Singular matrix)
    and stopped the study (issue 15): now the later one is left out and named."""
    outcomes, tidy = simulate(list(MARKET1501.names), n_ids=60, seed=4)
    for name in ("hat", "backpack"):  # both worn by identity 1 only: aliased, near-constant
        rows = tidy["attribute"] == name
        tidy.loc[rows, "value"] = np.where(tidy.loc[rows, "pid"] == 1, "yes", "no")
    with pytest.warns(UserWarning, match=r"attribute study: .*more notes"):
        study = run_study(outcomes, tidy, **TINY)
    assert any("backpack=yes = hat=yes" in note for note in study.notes)
    table = study.analyses["ap"].table
    assert "aliased with hat=yes" in table.loc["backpack", "glm.note"]
    assert np.isnan(table.loc["backpack", "glm.chi2"])
    assert np.isfinite(table.loc["hat", "glm.chi2"]) and table.loc["hat", "glm.df"] == 1
    assert set(study.order) == set(MARKET1501.names)  # still ranked by the other methods


def test_save_is_whole_and_never_clobbers_other_folders(planted, tmp_path):
    study = planted[3]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(InputError, match="not an attribute-study output"):
        study.save(tmp_path / "mine", plots=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    out = study.save(tmp_path / "study", plots=False)
    study.save(out, plots=False)  # an earlier study output is replaced
    summary = json.loads((out / "summary.json").read_text(),
                         parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert summary["ranking"] == study.order and summary["fdr_method"] == "fdr_bh"
    assert pd.read_csv(out / "ranking.csv")["attribute"].tolist() == study.order
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------- end to end

def _market_labels(n_test: int, seed: int) -> pd.DataFrame:
    """Tidy Market labels with multi-hot and invalid codes where the official files have them."""
    rng = np.random.default_rng(seed)
    rows = []
    for split, pids in (("train", range(2, 2 + 2 * 10, 2)),
                        ("test", range(100, 100 + n_test))):
        for pid in pids:
            for attribute in MARKET1501:
                rows.append((split, pid, attribute.name,
                             attribute.states[rng.integers(len(attribute.states))]))
    rows.append(("test", 101, "upper_color", "white"))  # multi-hot colour
    rows.append(("train", 2, "age", None))              # invalid code, not a query pid
    table = pd.DataFrame(rows, columns=["split", "pid", "attribute", "value"])
    table.attrs["schema"] = "market1501"
    return table


def _outcomes_from(labels: pd.DataFrame, schema: AttributeSchema, strong: list[str],
                   seed: int, per_id: int = 2) -> pd.DataFrame:
    """Queries of the test identities; AP driven by ``strong`` attributes (first state)."""
    rng = np.random.default_rng(seed)
    test = labels[labels["split"] == "test"]
    pids = np.sort(test["pid"].unique())
    eta = np.zeros(len(pids))
    for k, name in enumerate(strong):
        first = schema[name].states[0]
        has = test[(test["attribute"] == name) & (test["value"] == first)]["pid"]
        eta += (1.5 - 0.4 * k) * np.isin(pids, has.to_numpy())
    pid = np.repeat(pids, per_id)
    logit = np.repeat(eta, per_id) - 0.5 + rng.normal(0, 0.5, len(pid))
    ap = expit(logit)
    return pd.DataFrame({"pid": pid, "ap": ap,
                         "hit": (rng.random(len(pid)) < ap).astype(int),
                         "delta_ap_gender": np.clip(0.2 * ap * rng.random(len(pid)), 0, 1),
                         "delta_ap_hat": np.clip(0.05 * rng.normal(size=len(pid)), -1, 1)})


def test_market_mat_drives_the_cli_end_to_end(tmp_path):
    labels = _market_labels(120, seed=0)
    with pytest.warns(UserWarning, match="invalid attribute codes"):
        save_attribute_mat(labels, tmp_path / "market_attribute.mat")
        loaded = load_attributes(tmp_path / "market_attribute.mat")
    outcomes = _outcomes_from(loaded, MARKET1501, ["gender", "backpack"], seed=1)
    outcomes.to_csv(tmp_path / "per_query.csv", index=False)
    out = tmp_path / "study"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        code = attributes_main(["--attributes", str(tmp_path / "market_attribute.mat"),
                                "--outcomes", str(tmp_path / "per_query.csv"), "--out", str(out),
                                "--n-estimators", "20", "--n-splits", "2", "--n-repeats", "2",
                                "--rank-bootstrap", "6"])
    assert code == 0
    ranking = pd.read_csv(out / "ranking.csv")
    assert set(ranking["attribute"]) == set(MARKET1501.names)
    assert ranking["attribute"].iloc[0] == "gender"
    intervals = pd.read_csv(out / "rank_intervals.csv").set_index("attribute")
    assert list(intervals.index) == list(ranking["attribute"])
    assert intervals.loc["gender", "low"] == 1 and intervals.loc["gender", "group"] == 1
    assert (intervals["low"] <= intervals["rank"]).sum() >= 6  # not all outside their own
    saved = json.loads((out / "summary.json").read_text())["rank_intervals"]
    assert saved["draws_used"] + saved["failed"] == 6
    assert saved["draw_forest"] == {"n_estimators": 20, "n_splits": 2, "n_repeats": 1}
    delta = pd.read_csv(out / "delta_ranking.csv")
    assert delta["group"].tolist() == ["gender", "hat"]
    for name in ("consensus", "ap_importance", "hit_shap_beeswarm", "delta_ap_gender_importance",
                 "delta_ap"):
        assert (out / "plots" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    table = pd.read_csv(out / "table.csv", index_col="attribute")
    assert table.loc["upper_color", "kind"] == "multiclass"
    assert {"ap.glm.chi2", "ap.permutation.mean", "ap.shap.mean_abs", "ap.rank_test.q",
            "hit.contingency.test", "consensus.rank"} <= set(table.columns)
    bad = attributes_main(["--attributes", str(tmp_path / "nope.mat"), "--outcomes",
                           str(tmp_path / "per_query.csv"), "--out", str(tmp_path / "x")])
    assert bad == 2


@pytest.mark.filterwarnings("ignore:GLM:UserWarning")
@pytest.mark.parametrize("schema", [MARKET1501, DUKEMTMC], ids=lambda s: s.name)
def test_official_mat_with_multi_hot_and_empty_colour_rows_keeps_every_query(tmp_path, schema):
    """The official files have identities with several colours set, or none: neither loses a
    query by default (issue 15). Several set: one indicator per colour; none set: an explicit
    "none" state with its own indicator."""
    if schema is MARKET1501:
        labels = _market_labels(80, seed=2)
    else:
        rng = np.random.default_rng(2)
        labels = pd.DataFrame([("test", pid, a.name, a.states[rng.integers(len(a.states))])
                               for pid in range(100, 180) for a in DUKEMTMC],
                              columns=["split", "pid", "attribute", "value"])
    empty = labels["pid"].isin([103, 104, 105, 106, 107, 108]) & \
        (labels["attribute"] == "lower_color")
    labels = labels[~empty]  # no lower colour set for six identities
    more = pd.DataFrame([("test", pid, "lower_color", colour) for pid, colour in
                         [(110, "black"), (110, "white"), (111, "blue"), (111, "brown")]],
                        columns=labels.columns)
    labels = pd.concat([labels, more], ignore_index=True)
    labels.attrs["schema"] = schema.name
    path = tmp_path / f"{schema.name}_attribute.mat"
    with warnings.catch_warnings():  # Market's labels carry one invalid code, on purpose
        warnings.simplefilter("ignore", UserWarning)
        save_attribute_mat(labels, path, schema.name)
        loaded = load_attributes(path)
    outcomes = _outcomes_from(loaded, schema, ["gender"], seed=3)
    study = run_study(outcomes, loaded, split="test", **TINY)
    assert len(study.outcomes) == len(outcomes) == 160  # every query kept, missing="error"
    values = study.design.values.set_index(outcomes["pid"].to_numpy())["lower_color"]
    assert set(values.loc[[103, 104, 105, 106, 107, 108]]) == {"none"}
    several = set(values.loc[110].iloc[0].split("|"))
    assert {"black", "white"} <= several  # multi-hot: every colour set is kept
    x = study.design.X.set_index(outcomes["pid"].to_numpy())
    none_column = "lower_color=none"
    assert none_column in study.design.blocks["lower_color"]
    assert x.loc[[103, 104], none_column].eq(1).all()
    expected = {f"lower_color={c}" for c in several - {study.design.reference["lower_color"]}}
    row = x.loc[110, study.design.blocks["lower_color"]].iloc[0]
    assert set(row[row == 1].index) == expected  # one indicator per colour set
    assert "lower_color" in study.order
    with pytest.warns(UserWarning, match="dropping 12 of 160"):  # the old policy, on request
        dropped = run_study(outcomes, loaded, split="test", missing="drop",
                            no_class=None, **TINY)
    assert len(dropped.outcomes) == 148


def test_duke_mat_and_a_model_without_experts_end_to_end(tmp_path):
    """Features of a 'model' hurt by bags and gender; the study finds both from its outcomes."""
    rng = np.random.default_rng(4)
    rows = [("test", pid, a.name, a.states[rng.integers(len(a.states))])
            for pid in range(1, 121) for a in DUKEMTMC]
    labels = pd.DataFrame(rows, columns=["split", "pid", "attribute", "value"])
    save_attribute_mat(labels, tmp_path / "duke_attribute.mat", "dukemtmc")
    loaded = load_attributes(tmp_path / "duke_attribute.mat")
    wide = labels.pivot(index="pid", columns="attribute", values="value")
    pids = wide.index.to_numpy()
    # identity embeddings squeezed for bag=yes and gender=male: those identities crowd each
    # other in retrieval, so their queries get a lower AP
    scale = (1.0 - 0.55 * (wide["bag"] == "yes").to_numpy()
             - 0.35 * (wide["gender"] == "male").to_numpy())
    ident = rng.normal(size=(len(pids), 16)) * scale[:, None]
    q_pids = np.repeat(pids, 2)
    g_pids = np.repeat(pids, 3)
    q = ident[np.repeat(np.arange(len(pids)), 2)] + rng.normal(0, 0.5, (len(q_pids), 16))
    g = ident[np.repeat(np.arange(len(pids)), 3)] + rng.normal(0, 0.5, (len(g_pids), 16))
    outcomes = per_query_outcomes(q, g, q_pids, g_pids, np.zeros(len(q_pids)),
                                  np.ones(len(g_pids)), metric="euclidean")
    from torchreid.reid.metrics.rank import evaluate_rank  # the reference protocol

    distmat = ((q[:, None, :] - g[None, :, :]) ** 2).sum(-1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cmc, mAP = evaluate_rank(distmat, q_pids, g_pids, np.zeros(len(q_pids)),
                                 np.ones(len(g_pids)), use_cython=False)
    assert outcomes["ap"].mean() == pytest.approx(mAP, abs=1e-6)
    assert outcomes["hit"].mean() == pytest.approx(cmc[0], abs=1e-6)
    study = run_study(outcomes, loaded, n_estimators=20, n_splits=3, n_repeats=2)
    assert set(study.order[:2]) == {"bag", "gender"}
    assert study.delta_ranking is None
    table = pd.read_csv(study.save(tmp_path / "duke_study", plots=False) / "table.csv")
    assert set(table["attribute"]) == set(DUKEMTMC.names)


def test_a_small_market_table_is_exploratory_and_lists_each_fit_warning_once(tmp_path, capsys):
    """16 identities (the size of a first real-checkpoint try, issue 27): the study runs,
    says it is exploratory with each attribute's support, and the fits' warnings arrive as one
    warning listing each distinct message once; 200 identities read as confirmatory."""
    labels = _market_labels(16, seed=3)
    with pytest.warns(UserWarning, match="invalid attribute codes"):
        save_attribute_mat(labels, tmp_path / "market_attribute.mat")
        loaded = load_attributes(tmp_path / "market_attribute.mat")
    outcomes = _outcomes_from(loaded, MARKET1501, ["gender", "backpack"], seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        study = run_study(outcomes, loaded, split="test", missing="drop", **TINY)
    summaries = [w for w in caught if str(w.message).startswith("attribute study:")]
    assert len(summaries) == 1
    assert study.exploratory and study.notes[0].startswith("exploratory:")
    assert len(study.notes) == len(set(study.notes))  # each distinct message once
    # one short terminal line: the first note, and how many more the study holds
    assert str(summaries[0].message).startswith("attribute study: " + study.notes[0][:300])
    assert f"+{len(study.notes) - 1} more notes" in str(summaries[0].message)
    assert len(str(summaries[0].message)) < 500
    pids = study.outcomes["pid"].to_numpy()
    for attribute in study.design.attributes:  # support = identities in the rarest level
        per_level = pd.Series(pids).groupby(study.design.features[attribute].to_numpy())
        assert study.support[attribute] == per_level.nunique().min()
    assert min(study.support.values()) < 10
    saved = json.loads((study.save(tmp_path / "small", plots=False) / "summary.json")
                       .read_text(), parse_constant=lambda c: pytest.fail(c))
    assert saved["exploratory"] is True and saved["support"] == study.support
    code = attributes_main(["--attributes", str(tmp_path / "market_attribute.mat"),
                            "--outcomes", str(_csv(outcomes, tmp_path / "q.csv")),
                            "--out", str(tmp_path / "cli"), "--no-plots",
                            "--n-estimators", "10", "--n-splits", "2", "--n-repeats", "1",
                            "--rank-bootstrap", "4"])
    printed = capsys.readouterr().out
    assert code == 0 and "EXPLORATORY" in printed and "tied_group" in printed
    big_outcomes, big_labels = simulate(list(MARKET1501.names), n_ids=200, seed=5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        big = run_study(big_outcomes, big_labels, **TINY, min_identities=5)
    assert not big.exploratory and min(big.support.values()) >= 5


def _csv(frame: pd.DataFrame, path) -> object:
    frame.to_csv(path, index=False)
    return path
