"""The public way to training-time modifications from the objects a user holds.

``exp.modify(name, **options)`` on an Explainer and ``reid_explain.attach(model,
modifications=[...])`` reach the registered backbone modifications (MoSAIC's LoRA experts)
without the plugin registry or adapter choice; tiny random-initialised hosts on the CPU.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_osnet, make_timm_vit
from hygiene import host_state

import reid_explain
from reid_explain import (
    AdapterError,
    PluginError,
    UnknownPluginError,
    attach,
    auxiliary_losses,
    explainify,
)
from reid_explain.data.schema import MARKET1501

pytest.importorskip("peft")


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 64, 32, generator=torch.Generator().manual_seed(seed))


def known_codes(n: int = 4, seed: int = 2) -> torch.Tensor:
    """Attribute codes with every attribute known, so every group has an active expert."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randint(0, len(a.states), (n,), generator=g) for a in MARKET1501],
                       dim=1)


def nonzero_experts(moe, seed: int = 3) -> None:
    """Fresh experts have B = 0 (no effect); give every factor a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_modify_routes_bypasses_and_ablates_through_embed():
    model = make_timm_vit()
    x, codes = images(), known_codes()
    with explainify(model) as exp:
        plain = exp.embed(x)
        moe = exp.modify("lora_moe", schema="market1501")
        assert exp.modifications == {"lora_moe": moe} and moe.applied
        nonzero_experts(moe)
        with moe.route(codes):
            routed = exp.embed(x)
        with moe.bypass():
            bypassed = exp.embed(x)
        assert torch.equal(bypassed, plain)  # experts off: the host's own output
        assert (routed - plain).abs().max() > 1e-3  # routed experts with B != 0 act
        with moe.route(codes), moe.ablate("upper_color"):
            without_colour = exp.embed(x)
        assert (without_colour - routed).abs().max() > 1e-5
        groups = [g.attribute for g in moe.layout.groups]
        with moe.route(codes), moe.ablate(*groups):
            all_off = exp.embed(x)
        assert torch.allclose(all_off, plain, atol=1e-6)  # every group off = no expert
        with moe.route(codes):  # ablation ends with its block: routing is as before
            assert torch.equal(exp.embed(x), routed)
        # the modification survives the per-call HostGuard of explain / embed
        with moe.route(codes[:2]):
            exp.embed(x[:2])
        assert moe.applied and set(moe.lora_layers().values()) <= set(model.modules())
        with pytest.raises(RuntimeError, match="no routing"):
            exp.embed(x)  # a forward without routing is refused, not run without experts


def test_explain_runs_with_routed_experts():
    model = make_timm_vit()
    x = images(2)
    with explainify(model) as exp:
        moe = exp.modify("lora_moe", last_n=1)
        nonzero_experts(moe)
        # explain embeds each side, then attributes both sides as one batch of 2 pairs x 2
        with moe.bypass():
            result = exp.explain(x[:1], x[1:], method="gradcam")
        assert torch.isfinite(result.query.maps).all()
        assert moe.applied


def test_host_restored_exactly_after_close_last_in_first_out():
    model = make_timm_vit()
    before = host_state(model)
    exp = explainify(model)
    first = exp.modify("lora_moe", targets=["mlp.fc1"], prefix="a_", last_n=1)
    second = exp.modify("lora_moe", targets=["mlp.fc2"], prefix="b_", last_n=1)
    nonzero_experts(first)
    nonzero_experts(second, seed=4)
    during = host_state(model)
    assert during["modules"] != before["modules"]  # peft layers are in
    with first.route(known_codes()), second.route(known_codes()):
        exp.embed(images())
    assert host_state(model) == during  # the call's guard kept them
    exp.close()
    assert not first.applied and not second.applied
    assert host_state(model) == before  # module types, hooks, state_dict, requires_grad
    assert "peft_config" not in model.__dict__
    with pytest.raises(RuntimeError, match="closed"):
        exp.modify("lora_moe")


def test_modification_as_a_context_manager_removes_itself():
    model = make_timm_vit()
    before = host_state(model)
    with explainify(model) as exp:
        with exp.modify("lora_moe", last_n=1) as moe:
            with moe.route(known_codes()):
                exp.embed(images())
        assert not moe.applied and exp.modifications == {}
        assert host_state(model) == before  # the explainer adds nothing of its own
        exp.embed(images())  # still usable without the experts
    assert host_state(model) == before


def test_unknown_modification_lists_the_known_ones():
    with explainify(make_timm_vit()) as exp:
        with pytest.raises(UnknownPluginError, match="lora_moe") as info:
            exp.modify("lora_moee")
        assert "lora_moee" in str(info.value)


def test_missing_capability_and_bad_options_are_named():
    with explainify(make_osnet()) as exp, pytest.raises(AdapterError, match="attention"):
        exp.modify("lora_moe")
    model = make_timm_vit()
    before = host_state(model)
    with explainify(model) as exp:
        with pytest.raises(PluginError, match="lora_moe.*rnk"):
            exp.modify("lora_moe", rnk=4)
        with pytest.raises(PluginError, match="last_n"):
            exp.modify("lora_moe", last_n=99)
        assert exp.modifications == {}
    assert host_state(model) == before


def test_top_level_attach_gives_modifications_by_name():
    model = make_timm_vit()
    before = host_state(model)
    x, codes = images(), known_codes()
    assert reid_explain.attach is attach and reid_explain.auxiliary_losses is auxiliary_losses
    session = attach(model, modifications=["lora_moe"], lora_moe={"last_n": 1, "rank": 2})
    moe = session.modification("lora_moe")
    assert session.modifications == {"lora_moe": moe} and moe.applied
    assert moe.options["rank"] == 2
    nonzero_experts(moe)
    with moe.route(codes):
        routed = model(x)
    with moe.bypass():
        bypassed = model(x)
    assert (routed - bypassed).abs().max() > 1e-3
    assert {id(p) for p in session.parameters()} == {id(p) for p in moe.parameters()}
    with pytest.raises(UnknownPluginError, match="no modification 'ppim'.*lora_moe"):
        session.modification("ppim")
    session.detach()
    assert host_state(model) == before
