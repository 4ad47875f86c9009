"""Identity-clustered bootstrap intervals of the attribute study's ranks (issue 27)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from test_attribute_study import TINY, simulate

from reid_explain.attributes.rank_intervals import (
    identity_bootstrap_sample,
    rank_intervals,
    tied_groups,
)
from reid_explain.data.schema import MARKET1501
from reid_explain.errors import InputError


def test_a_draw_resamples_whole_identities_under_fresh_ids():
    outcomes, tidy = simulate(list(MARKET1501.names), n_ids=30, per_id=3, seed=2)
    sample, table = identity_bootstrap_sample(outcomes, tidy, np.random.default_rng(0))
    assert sample["pid"].nunique() == 30 and table["pid"].nunique() == 30
    assert table.attrs["schema"] == tidy.attrs["schema"]
    drawn = np.random.default_rng(0).choice(np.unique(outcomes["pid"]), size=30, replace=True)
    assert len(set(drawn)) < 30  # some identity twice: it must count as two clusters
    for k, pid in enumerate(drawn, start=1):
        mine, theirs = sample[sample.pid == k], outcomes[outcomes.pid == pid]
        np.testing.assert_array_equal(mine["ap"].to_numpy(), theirs["ap"].to_numpy())
        a = table[table.pid == k].drop(columns="pid").reset_index(drop=True)
        b = tidy[tidy.pid == pid].drop(columns="pid").reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)


def test_tied_groups_need_every_interval_of_a_group_to_share_a_point():
    table = pd.DataFrame({"low": [1, 1, 2, 4, 3, 7], "high": [2, 3, 4, 6, 5, 8]})
    # [1,2], [1,3], [2,4] all hold 2: one group; [4,6] misses that shared point: a new group,
    # which [3,5] joins (both hold 4 and 5); [7,8] alone
    assert tied_groups(table) == [1, 1, 1, 2, 2, 3]


def test_intervals_separate_a_planted_order_and_tie_a_small_table():
    order = list(MARKET1501.names)
    outcomes, tidy = simulate(order, n_ids=200, seed=0)
    big = rank_intervals(outcomes, tidy, n_boot=10, seed=1, **TINY)
    table = big.table.set_index("attribute")
    assert len(big.draws) == 10 and not big.failed
    assert list(table["rank"]) == list(range(1, 13))
    assert (table["low"] <= table["high"]).all()
    np.testing.assert_allclose(table["high"], big.draws.quantile(0.975)[table.index])
    # the three strong planted effects (SD 1.2, 1.0, 0.8; the rest 0.5 to 0.05) are the top
    # group, told apart from everything else
    assert set(big.groups[0]) == set(order[:3])
    assert (table.loc[order[:3], "high"] < 4).all() and len(big.groups) >= 3
    small_out, small_tidy = simulate(order, n_ids=16, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = rank_intervals(small_out, small_tidy, n_boot=10, seed=1, **TINY)
    # 16 identities cannot order 12 attributes: fewer, larger tied groups, wider intervals
    assert len(small.groups) < len(big.groups)
    assert len(small.groups[0]) > 3
    width = lambda r: float((r.table["high"] - r.table["low"]).mean())  # noqa: E731
    assert width(small) > 1.3 * width(big)
    record = small.to_json()
    assert record["draws_used"] == 10 and len(record["attributes"]) == 12
    with pytest.raises(InputError, match="n_boot"):
        rank_intervals(small_out, small_tidy, n_boot=1, **TINY)
