"""The causal attribute audit (issue 28): re-renders that change one attribute, a planted
reliance recovered, and agreement measured with scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from reid_explain.attributes.causal import (
    ATTRIBUTE_PARTS,
    agreement,
    causal_audit,
    changed_render,
)
from reid_explain.data.schema import MARKET1501
from reid_explain.errors import InputError
from reid_explain.synthpedes.planning import SynthConfig, plan, render_sample
from reid_explain.synthpedes.rendering import LABEL

CONFIG = {"n_ids": 40, "images_per_id": 4, "seed": 11, "height": 64, "width": 32}


def test_a_changed_render_differs_only_where_the_attribute_is_drawn():
    synth = plan(SynthConfig(**CONFIG))
    specs = [s for s in synth.samples if s.split == "query"][:25]
    changed_any = {a: 0 for a in ATTRIBUTE_PARTS}
    for spec in specs:
        first = render_sample(synth, spec, with_captions=False).rendered
        for attribute, parts in ATTRIBUTE_PARTS.items():
            second, new = changed_render(synth, spec, attribute, seed=3)
            assert new != synth.identity_of(spec).get(attribute)
            again, _ = changed_render(synth, spec, attribute, seed=3)
            assert np.array_equal(second.image, again.image)  # deterministic
            differ = (first.image != second.image).any(axis=-1)
            drawn = np.isin(first.labels, [LABEL[p] for p in parts]) | np.isin(
                second.labels, [LABEL[p] for p in parts])
            assert not (differ & ~drawn).any(), (attribute, spec.name)
            changed_any[attribute] += int(differ.any())
    # the bound is not met by changing nothing: every attribute changes some images
    assert all(n > 0 for n in changed_any.values()), changed_any


class UpperColourHost(nn.Module):
    """A host built to rely on one attribute: a soft colour histogram of the band where the
    upper body is drawn (27 colour centres), nothing else of the image."""

    def __init__(self) -> None:
        super().__init__()
        grid = torch.linspace(0, 1, 3)
        self.register_buffer("centres", torch.cartesian_prod(grid, grid, grid))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rgb = x * 0.5 + 0.5  # the audit's mean/std below are 0.5
        h = rgb.shape[-2]
        band = rgb[:, :, int(0.3 * h): int(0.5 * h)].flatten(2).transpose(1, 2)  # B, P, 3
        weights = torch.softmax(-torch.cdist(band, self.centres[None]) ** 2 / 0.02, dim=-1)
        return weights.mean(dim=1)


def test_the_audit_recovers_a_planted_reliance():
    audit = causal_audit(UpperColourHost(), CONFIG | {"n_ids": 120}, mean=(0.5,) * 3,
                         std=(0.5,) * 3, n_boot=200)
    table = audit.table.set_index("attribute")
    assert audit.ranking[0] == "upper_color"
    others = table.drop(index="upper_color")
    assert table.loc["upper_color", "ap_drop_low"] > 0  # its CI excludes no reliance
    assert table.loc["upper_color", "ap_drop"] > 2 * others["ap_drop"].max()
    # the embedding moves with the planted attribute; other changes touch the band only where
    # a backpack or an arm crosses it
    assert table.loc["upper_color", "shift"] > 4 * others["shift"].max()
    assert set(table.index) == set(MARKET1501.names)
    rows = audit.per_query
    assert (rows["ap_drop"] == rows["ap"] - rows["ap_changed"]).all()
    upper = rows[rows.attribute == "upper_color"]
    per_identity = upper.groupby("pid")["ap_drop"].mean()
    assert table.loc["upper_color", "ap_drop"] == pytest.approx(per_identity.mean())
    assert audit.to_json()["ranking"] == audit.ranking
    with pytest.raises(InputError, match="unknown attributes"):
        causal_audit(UpperColourHost(), CONFIG, mean=(0.5,) * 3, std=(0.5,) * 3,
                     attributes=["shoe_size"])


def test_agreement_is_spearman_over_shared_attributes_and_top_k():
    causal = ["a", "b", "c", "d", "e"]
    observed = ["b", "a", "x", "e", "c", "d"]
    result = agreement(causal, observed)
    order = ["b", "a", "e", "c", "d"]
    expected = spearmanr([0, 1, 2, 3, 4], [order.index(a) for a in causal]).statistic
    assert result["spearman"] == pytest.approx(expected)
    assert result["top3_shared"] == 2 and result["attributes"] == 5
    assert agreement(causal, causal)["spearman"] == pytest.approx(1.0)
    with pytest.raises(InputError, match="at least 3"):
        agreement(["a", "b"], ["a", "b"])


def test_audit_command_on_a_synthpedes_export(tmp_path, capsys):
    """``reid-explain audit`` re-renders an export's own config: the same queries, the same
    table as the library gives, written whole; a folder that is not an export is refused."""
    import json

    import pandas as pd

    from reid_explain import zoo
    from reid_explain.cli import main

    assert main(["synth", "--out", str(tmp_path / "data"), "--ids", "24", "--seed", "8"]) == 0
    weights = tmp_path / "osnet.pth"
    torch.save(zoo.load("osnet-synthpedes").state_dict(), weights)
    capsys.readouterr()
    code = main(["audit", "--data", str(tmp_path / "data"), "--model", "torchreid:osnet_x0_25",
                 "--weights", str(weights), "--height", "128", "--width", "64",
                 "--out", str(tmp_path / "audit")])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    table = pd.read_csv(tmp_path / "audit" / "table.csv")
    summary = json.loads((tmp_path / "audit" / "summary.json").read_text())
    assert list(table["attribute"]) == summary["ranking"] and len(table) == 12
    assert summary["config"]["data_seed"] == 8
    assert "causal attribute audit done in" in printed.err and "ap_drop" in printed.out
    assert main(["audit", "--data", str(tmp_path), "--model", "torchreid:osnet_x0_25",
                 "--out", str(tmp_path / "no")]) == 2
    assert "not a SynthPedes export" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()


def test_codes_of_rendered_people_are_the_codes_the_exported_mat_gives(tmp_path):
    """``attribute_codes_of`` (what an oracle-routed audit hands the router) equals what
    ``ImageReidDataset`` reads for the same identities from a ``market_attribute.mat`` export."""
    from reid_explain.attributes.causal import attribute_codes_of
    from reid_explain.data.attributes import load_attributes
    from reid_explain.data.datasets import ImageReidDataset
    from reid_explain.synthpedes.export import export_synthpedes

    config = SynthConfig(**CONFIG | {"n_ids": 16})
    export_synthpedes(tmp_path, config, formats=("market", "attributes"))
    table = load_attributes(tmp_path / "market1501" / "market_attribute.mat")
    synth = plan(config)
    checked = 0
    for split in ("train", "query"):
        data = ImageReidDataset(tmp_path, split, attributes=table)
        for i in range(len(data)):
            pid = data.original_pids[i]
            if pid == 0:
                continue
            expected = attribute_codes_of([synth.identity_by_pid[pid]])[0]
            assert torch.equal(data[i]["attributes"], expected), (split, pid)
            checked += 1
    assert checked >= 16


def test_an_oracle_routed_moe_is_audited_through_its_experts():
    """A random host whose only strong experts are gender's: routed by the oracle from each
    render's codes (a changed render carries its changed codes), gender moves the embedding
    most; the host alone barely sees gender, and ranks it nowhere near first."""
    from conftest import make_timm_vit

    from reid_explain.moe.audit import moe_causal_audit
    from reid_explain.training.session import attach

    model = make_timm_vit()
    session = attach(model, modifications=["lora_moe"],
                     lora_moe={"schema": "market1501", "last_n": 2, "rank": 4})
    moe = session.modification("lora_moe")
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".moe_gender_" in name:
                p.copy_(torch.randn(p.shape, generator=g))
    try:
        config = CONFIG | {"n_ids": 30}
        routed = moe_causal_audit(moe, config, (0.5,) * 3, (0.5,) * 3).table
        host = moe_causal_audit(moe, config, (0.5,) * 3, (0.5,) * 3, experts=False).table
    finally:
        session.detach()
    routed, host = routed.set_index("attribute"), host.set_index("attribute")
    assert routed["shift"].idxmax() == "gender"
    # by a margin: 4.2x the next attribute here; 2.5-5.1x over five other pairs of expert and
    # data seeds (the bound was 3x, which three of them missed)
    assert routed.loc["gender", "shift"] > 2 * routed.drop(index="gender")["shift"].max()
    assert host.loc["gender", "shift"] < 0.5 * host["shift"].max()
    assert not model.training  # the audit left the modes as it found them (eval)
