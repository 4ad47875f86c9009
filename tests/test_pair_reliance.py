"""pair_reliance: distractor similarity regressed on shared attribute states."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from reid_explain.attributes.pair_reliance import pair_reliance
from reid_explain.data.schema import MARKET1501
from reid_explain.errors import DataFormatError, InputError

#: attribute -> (number of states drawn from, weight the planted model gives a shared state);
#: the schema's other attributes are the same for everyone
PLANTED = {"upper_color": (6, 0.30), "gender": (2, 0.0), "hat": (2, 0.12),
           "age": (4, 0.05), "backpack": (2, 0.20)}
IDENTITY_WEIGHT = 0.33


def planted_features(states: dict[int, dict[str, int]], pids: list[int]) -> torch.Tensor:
    """Features whose cosine similarity between two different people is exactly
    ``sum_a w_a [same state of a]``: one one-hot block per attribute scaled by sqrt(w_a), and
    a one-hot identity block (orthogonal between identities) scaled to make the norm 1."""
    ids = sorted(states)
    blocks = []
    for name, (n, weight) in PLANTED.items():
        codes = torch.tensor([states[p][name] for p in pids])
        blocks.append(np.sqrt(weight) * torch.nn.functional.one_hot(codes, n).float())
    index = torch.tensor([ids.index(p) for p in pids])
    blocks.append(np.sqrt(IDENTITY_WEIGHT) * torch.nn.functional.one_hot(index, len(ids)).float())
    return torch.cat(blocks, dim=1)


def planted_data(n_ids: int = 40, seed: int = 0):
    """Identities with random planted states, their wide Market-1501 table (state names), and
    2 query and 3 gallery images each."""
    rng = np.random.default_rng(seed)
    states = {pid: {name: int(rng.integers(n)) for name, (n, _) in PLANTED.items()}
              for pid in range(1, n_ids + 1)}
    table = pd.DataFrame([{"pid": pid} | {a.name: a.states[row.get(a.name, 0)]
                                          for a in MARKET1501}
                          for pid, row in states.items()])
    q_pids = [p for p in states for _ in range(2)]
    g_pids = [p for p in states for _ in range(3)]
    return states, table, q_pids, g_pids


def test_effects_are_the_planted_similarity_per_shared_state_and_rank_them():
    """Total weight 1 (0.67 attributes + 0.33 identity), so features have norm 1 and a
    different-identity pair's similarity is exactly the planted sum: OLS returns each weight.
    Same-identity pairs (similarity 1) and a distractor without labels would bias every
    effect, so exact recovery also shows they are left out."""
    states, table, q_pids, g_pids = planted_data()
    q = planted_features(states, q_pids)
    g = torch.cat([planted_features(states, g_pids), torch.randn(4, q.shape[1])])
    result = pair_reliance(q, g, q_pids, g_pids + [-1] * 4, table, schema="market1501",
                           max_pairs=None)
    effects = result.table.set_index("attribute")["effect"]
    for name, (_, weight) in PLANTED.items():
        assert effects[name] == pytest.approx(weight, abs=1e-6), (name, effects)
    assert result.ranking == ["upper_color", "backpack", "hat", "age", "gender"]
    assert result.table["rank"].tolist() == [1, 2, 3, 4, 5]
    assert result.config["pairs"] == len(q_pids) * len(g_pids) - 2 * 3 * 40
    assert set(result.config["constant_attributes"]) == set(MARKET1501.names) - set(PLANTED)
    assert (result.table["low"] <= result.table["effect"]).all()
    # shared shares are the pairs' own: 1/6 of random upper colours, about
    assert 0.1 < result.table.set_index("attribute").loc["upper_color", "shared"] < 0.25


def test_noise_leaves_the_order_and_widens_the_intervals():
    states, table, q_pids, g_pids = planted_data(60, seed=1)
    gen = torch.Generator().manual_seed(0)
    q = planted_features(states, q_pids)
    g = planted_features(states, g_pids)
    q = torch.cat([q, 0.3 * torch.randn(len(q), 64, generator=gen)], dim=1)
    g = torch.cat([g, 0.3 * torch.randn(len(g), 64, generator=gen)], dim=1)
    result = pair_reliance(q, g, q_pids, g_pids, table, schema="market1501", max_pairs=5000,
                           seed=3)
    # 5000 of the 120 x 180 pairs drawn, those of one identity (360 of 21600) left out
    assert 4800 < result.config["pairs"] < 5000
    assert result.ranking[:2] == ["upper_color", "backpack"]
    gender = result.table.set_index("attribute").loc["gender"]
    assert gender["low"] < 0 < gender["high"]  # the unused attribute's interval holds zero
    assert (result.table.set_index("attribute").loc["upper_color", "low"]
            > result.table.set_index("attribute").loc["hat", "high"])


def test_bad_inputs_are_named():
    states, table, q_pids, g_pids = planted_data(10)
    q, g = planted_features(states, q_pids), planted_features(states, g_pids)
    bad = q.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN or inf"):
        pair_reliance(bad, g, q_pids, g_pids, table, schema="market1501")
    with pytest.raises(DataFormatError, match="lacks column.*'hat'"):
        pair_reliance(q, g, q_pids, g_pids, table.drop(columns="hat"), schema="market1501")
    with pytest.raises(InputError, match="20 query and 30 gallery features for 19 and 30"):
        pair_reliance(q, g, q_pids[:-1], g_pids, table, schema="market1501")
    with pytest.raises(InputError, match="at least 3 labelled identities"):
        pair_reliance(q, g, q_pids, g_pids, table[table["pid"] <= 2], schema="market1501")
