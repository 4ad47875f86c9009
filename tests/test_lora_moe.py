"""MoSAIC-ReID residual LoRA-MoE: peft experts, gated per-sample mixture, routing, removal,
checkpoints and training, on tiny random-initialised timm and open_clip ViTs (CPU)."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_timm_vit, make_tiny_clip
from hygiene import host_state

from reid_explain.data.schema import DUKEMTMC, MARKET1501, AttributeKind
from reid_explain.explain.explainer import choose_adapter
from reid_explain.moe.checkpoint import load_checkpoint, save_checkpoint
from reid_explain.moe.experts import ExpertLayout
from reid_explain.moe.mixture import GatedLoraSum, Workspace, make_plan
from reid_explain.moe.routers import LearnedRouter, learned_embed
from reid_explain.moe.train import (
    IdClassifier,
    batch_hard_triplet,
    load_split,
    moe_losses,
    pk_batches,
    train_image_moe_main,
    trainable_parameters,
)
from reid_explain.plugin_api.manager import get

XDIST_COST_S = 21  # seconds on 2 cores: pytest-xdist starts the longest files first

peft = pytest.importorskip("peft")
from peft.tuners.lora import LoraLayer  # noqa: E402

HOSTS = {"timm": make_timm_vit, "clip": make_tiny_clip}
B = 6


def lora_moe_cls():
    return get("backbone_modifications", "lora_moe").obj


def make(host: str, **options):
    model = HOSTS[host]()
    adapter = choose_adapter(model)(model)
    return model, adapter, lora_moe_cls()(adapter, **options)


def images(n: int = B, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 64, 32, generator=torch.Generator().manual_seed(seed))


def random_codes(n: int = B, seed: int = 2, unknown: bool = True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = -1 if unknown else 0
    return torch.stack([torch.randint(low, len(a.states), (n,), generator=g) for a in MARKET1501],
                       dim=1)


def randomize_experts(moe, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in moe.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# --------------------------------------------------------------------------- layout


def test_layout_from_schema_kinds():
    layout = ExpertLayout(MARKET1501)
    sizes = {g.attribute: len(g.experts) for g in layout.groups}
    assert sizes["hat"] == 1 and sizes["gender"] == 2 and sizes["age"] == 4
    assert sizes["upper_color"] == 8 and sizes["lower_color"] == 9
    assert layout.num_experts == 5 * 2 + 4 * 1 + 4 + 8 + 9
    assert all("." not in name for name in layout.names)
    # presence: expert only when present; two-state / multiclass: exactly one; -1: none
    codes = torch.full((3, len(MARKET1501)), -1)
    codes[0, MARKET1501.names.index("hat")] = 1
    codes[1, MARKET1501.names.index("hat")] = 0
    codes[2, MARKET1501.names.index("age")] = 2
    gates = layout.gates(codes)
    hat = layout.group("hat").experts[0]
    assert gates[0].sum() == 1 and gates[0, hat] == 1
    assert gates[1].sum() == 0
    assert gates[2, layout.group("age").experts[2]] == 1 and gates[2].sum() == 1
    full = layout.gates(random_codes(50, unknown=False))
    per_group = [full[:, list(g.experts)].sum(1) for g in layout.groups]
    for group, count in zip(layout.groups, per_group, strict=True):
        if group.kind is AttributeKind.PRESENCE:
            assert set(count.tolist()) <= {0.0, 1.0}
        else:
            assert set(count.tolist()) == {1.0}
    duke = ExpertLayout(DUKEMTMC)
    assert duke.num_experts == 5 * 1 + 3 * 2 + 8 + 7 and len(duke.groups) == 10


def test_plugin_is_registered():
    cls = lora_moe_cls()
    assert cls.name == "lora_moe" and cls.__module__.endswith("plugins.moe.lora_moe")


# --------------------------------------------------------------------------- peft experts


@pytest.mark.parametrize("host", ["timm", "clip"])
def test_peft_makes_the_lora_layers(host):
    model, adapter, moe = make(host)
    with moe:
        layers = moe.lora_layers()
        assert layers and all(isinstance(m, LoraLayer) and isinstance(m, peft.tuners.lora.Linear)
                              for m in layers.values())
        wrapped = [n for n, m in model.named_modules() if isinstance(m, LoraLayer)]
        assert sorted(wrapped) == sorted(layers)
        for layer in layers.values():
            assert set(layer.lora_A) == set(moe.layout.names)
        if host == "timm":
            assert sorted(layers) == sorted(f"blocks.{b}.{t}" for b in (1, 2) for t in (
                "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
        else:  # Linear projections of the last two *visual* blocks only, never MHA
            assert all(n.startswith("visual.transformer.resblocks.") for n in layers)
            assert sorted(t.rsplit(".", 2)[-2] + "." + t.rsplit(".", 1)[-1] for t in layers) == \
                sorted(["mlp.c_fc", "mlp.c_proj"] * 2)
        trainable = {id(p) for p in moe.parameters()}
        assert all(p.requires_grad == (id(p) in trainable) for p in model.parameters())


def test_multihead_attention_target_is_refused():
    _, _, moe = make("clip", targets=["attn"])
    with pytest.raises(ValueError, match="MultiheadAttention"):
        moe.apply()


@pytest.mark.parametrize("host", ["timm", "clip"])
def test_fresh_experts_leave_the_host_unchanged(host):
    model, adapter, moe = make(host)
    x = images()
    with torch.no_grad():
        reference = adapter.embed_image(x)
        with moe, moe.route(random_codes()):
            out = adapter.embed_image(x)
    assert (out - reference).abs().max().item() <= 1e-6


@pytest.mark.parametrize("host", ["timm", "clip"])
def test_gated_sum_equals_peft_forward(host):
    model, adapter, moe = make(host, pooling="sum")
    x = images()
    names = list(moe.layout.names)
    with moe, torch.no_grad():
        randomize_experts(moe)
        for active in ([names[7]], [names[0], names[12], names[20], names[30]]):
            gates = torch.zeros(B, len(names))
            gates[:, [names.index(n) for n in active]] = 1.0
            with moe.peft_active(active):
                expected = adapter.embed_image(x)
            with moe.route(gates=gates):
                got = adapter.embed_image(x)
            with moe.bypass():
                host_out = adapter.embed_image(x)
            assert (got - host_out).abs().max() > 1e-2  # the experts do something
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)

        # per sample, one batch, arbitrary routing: each row equals peft on that row alone
        codes = random_codes()
        gates = moe.layout.gates(codes)
        with moe.route(codes):
            batched = adapter.embed_image(x)
        for i in range(B):
            active = [names[e] for e in torch.nonzero(gates[i]).flatten().tolist()]
            with moe.peft_active(active):
                alone = adapter.embed_image(x[i:i + 1])
            torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-5, atol=1e-5)


def test_slot_and_dense_paths_and_mean_pooling_agree():
    model, adapter, moe = make("timm")
    with moe:
        randomize_experts(moe)
        layer = moe.lora_layers()["blocks.2.mlp.fc1"]
        mixer = GatedLoraSum(layer, moe.layout.names)
        x = torch.randn(B, 9, layer.in_features)
        base = layer.base_layer(x)
        gates = moe.layout.gates(random_codes())
        group_of, groups = moe.layout.group_of(), len(moe.layout.groups)
        slots = make_plan(gates, group_of, groups, "mean")
        # one slot per routed group, as many as the most-routed sample has
        width = int((gates != 0).sum(1).max())
        assert width < groups  # random codes leave some groups unrouted
        assert slots.index is not None and slots.index.shape == (B, width)
        dense = make_plan(gates, group_of, groups, "mean", dense=True)
        summed = make_plan(gates / gates.sum(1, keepdim=True), group_of, groups, "sum")
        with torch.no_grad():
            out = mixer.add_to(base, x, slots)
            torch.testing.assert_close(mixer.add_to(base, x, dense), out, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(mixer.add_to(base, x, summed), out, rtol=1e-5, atol=1e-6)
            assert (out - base).abs().max() > 1e-3
        soft = torch.rand(B, moe.layout.num_experts)
        assert make_plan(soft, group_of, groups, "sum").dense is not None  # soft -> dense


def test_workspace_gathers_give_the_allocating_path_bit_for_bit():
    """The reused gather buffers (inference only) change no value, for shrinking and growing
    batches through one workspace shared by two layers, and are not used under autograd."""
    model, adapter, moe = make("timm")
    with moe:
        randomize_experts(moe)
        layers = [moe.lora_layers()[n] for n in ("blocks.2.mlp.fc1", "blocks.2.mlp.fc2")]
        workspace = Workspace()
        shared = [GatedLoraSum(layer, moe.layout.names, workspace) for layer in layers]
        plain = [GatedLoraSum(layer, moe.layout.names) for layer in layers]
        group_of, groups = moe.layout.group_of(), len(moe.layout.groups)
        for batch in (B, 2, B + 3):
            torch.manual_seed(batch)
            codes = torch.stack([torch.randint(0, len(a.states), (batch,))
                                 for a in moe.layout.schema], dim=1)
            plan = make_plan(moe.layout.gates(codes), group_of, groups, "mean")
            for with_ws, without in zip(shared, plain, strict=True):
                x = torch.randn(batch, 9, with_ws.layer.in_features)
                base = with_ws.layer.base_layer(x).detach()
                with torch.no_grad():
                    got = with_ws.add_to(base.clone(), x, plan, inplace=True)
                    expected = without.add_to(base.clone(), x, plan)
                assert torch.equal(got, expected)
                assert (got - base).abs().max() > 1e-3
        grown = sum(t.numel() for t in workspace._buffers.values())
        assert grown > 0
        x = torch.randn(B, 9, layers[0].in_features, requires_grad=True)
        plan = make_plan(moe.layout.gates(random_codes()), group_of, groups, "mean")
        shared[0].add_to(layers[0].base_layer(x), x, plan).sum().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        assert sum(t.numel() for t in workspace._buffers.values()) == grown


@pytest.mark.parametrize("host", ["timm", "clip"])
def test_ablating_a_group_changes_only_the_samples_routed_to_it(host):
    model, adapter, moe = make(host)
    x = images()
    codes = random_codes(unknown=False)
    hat = MARKET1501.names.index("hat")
    gender = MARKET1501.names.index("gender")
    codes[:, hat] = torch.tensor([1, 0, 1, 0, 0, 1])  # rows 0, 2, 5 wear a hat
    codes[:, gender] = torch.tensor([0, 1, -1, -1, 1, 0])  # rows 2, 3: gender unknown
    with moe, torch.no_grad(), moe.route(codes):
        randomize_experts(moe)
        full = adapter.embed_image(x)
        for group, routed in (("hat", [0, 2, 5]), ("gender", [0, 1, 4, 5])):
            with moe.ablate(group):
                ablated = adapter.embed_image(x)
            others = [i for i in range(B) if i not in routed]
            assert torch.equal(ablated[others], full[others])
            assert ((ablated[routed] - full[routed]).abs().amax(1) > 1e-4).all()
        with moe.ablate("hat", "gender"):
            both = adapter.embed_image(x)
        assert torch.equal(both[[3]], full[[3]])
        assert torch.equal(adapter.embed_image(x), full)  # ablation undone on exit
    with pytest.raises(KeyError, match="groups"):
        with moe.ablate("wings"):
            pass


def test_unrouted_forward_raises():
    model, adapter, moe = make("timm")
    with moe, pytest.raises(RuntimeError, match="route"):
        adapter.embed_image(images())


@pytest.mark.parametrize("host", ["timm", "clip"])
def test_remove_restores_the_host_bit_identically(host):
    model, adapter, moe = make(host, unfreeze_last=1)
    model.get_parameter(next(n for n, _ in model.named_parameters())).requires_grad_(False)
    x = images()
    before = host_state(model)
    with torch.no_grad():
        reference = adapter.embed_image(x)
    types = [(n, type(m)) for n, m in model.named_modules()]
    keys = list(model.state_dict())
    moe.apply()
    assert host_state(model) != before
    with torch.no_grad(), moe.route(random_codes()):
        randomize_experts(moe)
        adapter.embed_image(x)
    moe.remove()
    assert host_state(model) == before  # modules, hooks, modes, requires_grad, state_dict digest
    assert [(n, type(m)) for n, m in model.named_modules()] == types
    assert list(model.state_dict()) == keys
    assert "peft_config" not in model.__dict__
    assert not any(isinstance(m, LoraLayer) for m in model.modules())
    with torch.no_grad():
        assert torch.equal(adapter.embed_image(x), reference)


# --------------------------------------------------------------------------- checkpoints


def test_save_load_round_trip_reproduces_outputs(tmp_path):
    model, adapter, moe = make("timm")
    x = images()
    codes = random_codes()
    moe.apply()
    randomize_experts(moe)
    router = LearnedRouter(moe.layout, model.num_features)
    classifier = IdClassifier(model.num_features, 5)
    with torch.no_grad():
        with moe.route(codes):
            expected = adapter.embed_image(x)
        expected_learned, _ = learned_embed(moe, router.eval(), x)
    save_checkpoint(tmp_path / "ckpt", moe, router, classifier)
    folder = tmp_path / "ckpt" / "experts" / moe.layout.names[0]
    assert (folder / "adapter_model.safetensors").exists()
    assert (folder / "adapter_config.json").exists()
    state = moe.expert_state_dicts()[moe.layout.names[0]]
    assert all(".lora_A.weight" in k or ".lora_B.weight" in k for k in state)  # peft's keys
    moe.remove()

    fresh_model = make_timm_vit()
    fresh_adapter = choose_adapter(fresh_model)(fresh_model)
    fresh = lora_moe_cls()(fresh_adapter).apply()
    fresh_router = LearnedRouter(fresh.layout, fresh_model.num_features)
    fresh_classifier = IdClassifier(fresh_model.num_features, 5)
    load_checkpoint(tmp_path / "ckpt", fresh, fresh_router, fresh_classifier)
    with torch.no_grad():
        with fresh.route(codes):
            got = fresh_adapter.embed_image(x)
        got_learned, _ = learned_embed(fresh, fresh_router.eval(), x)
    assert torch.equal(got, expected)
    assert torch.equal(got_learned, expected_learned)
    for a, b in zip(classifier.state_dict().values(), fresh_classifier.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    # the flat state_dict of the BackboneModification contract round-trips too
    other_model = make_timm_vit()
    other = lora_moe_cls()(choose_adapter(other_model)(other_model)).apply()
    other.load_state_dict(fresh.state_dict())
    with torch.no_grad(), other.route(codes):
        assert torch.equal(other.adapter.embed_image(x), expected)
    with pytest.raises(ValueError, match="missing"):
        other.load_expert_state_dicts({})


# --------------------------------------------------------------------------- training


def test_batch_hard_triplet_by_hand():
    emb = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0], [0.0, 5.0]])
    pids = torch.tensor([0, 0, 1, 1])
    # anchor 0: pos 1, neg min(3, 5) = 3 -> 0; anchor 1: pos 1, neg sqrt(10) -> 0
    # anchor 2: pos 2, neg 3 -> 0; anchor 3: pos 2, neg 5 -> 0; margin 2.5 gives 0.5 at 0, 2
    loss = batch_hard_triplet(emb, pids, margin=2.5)
    expected = (torch.relu(torch.tensor([1 - 3 + 2.5, 1 - 10 ** 0.5 + 2.5, 2 - 3 + 2.5,
                                         2 - 26 ** 0.5 + 2.5]))).mean()
    torch.testing.assert_close(loss, expected)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from reid_explain.synthpedes.export import export_synthpedes
    from reid_explain.synthpedes.planning import SynthConfig

    root = tmp_path_factory.mktemp("synth") / "sp"
    export_synthpedes(root, SynthConfig(n_ids=12, images_per_id=4, height=64, width=32),
                      formats=("market", "attributes"))
    return root


def test_short_training_run_decreases_the_loss(synth_root):
    from reid_explain.data.attributes import load_attributes
    from reid_explain.data.datasets import ImageReidDataset, default_transform

    table = load_attributes(synth_root / "market1501" / "market_attribute.mat")
    train = load_split(ImageReidDataset(synth_root, "train", transform=default_transform(64, 32),
                                        attributes=table))
    assert train["attributes"].shape[1] == len(MARKET1501)
    model, adapter, moe = make("timm")
    with moe:
        classifier = IdClassifier(model.num_features, int(train["pid"].max()) + 1)
        router = LearnedRouter(moe.layout, model.num_features)
        params = trainable_parameters(moe, classifier, router)
        host_ids = {id(p) for p in model.parameters()} - {id(p) for p in moe.parameters()}
        assert not host_ids & {id(p) for p in params}  # backbone frozen by default
        frozen = copy.deepcopy({k: v for k, v in model.state_dict().items() if "lora_" not in k})
        optimizer = torch.optim.AdamW(params, lr=3e-3)
        batch = next(pk_batches(train["pid"].tolist(), 4, 4, torch.Generator().manual_seed(0)))
        idx = torch.tensor(batch)
        model.train()
        losses = []
        for _ in range(12):
            out = moe_losses(moe, train["img"][idx], train["pid"][idx], train["attributes"][idx],
                             classifier, router)
            optimizer.zero_grad()
            out["loss"].backward()
            optimizer.step()
            losses.append({k: float(v.detach()) for k, v in out.items()})
        model.eval()
        assert losses[-1]["loss"] < 0.8 * losses[0]["loss"]
        assert losses[-1]["router"] < losses[0]["router"]
        assert any(p.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n)
        after = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
        assert all(torch.equal(frozen[k], after[k]) for k in frozen)
        # hard learned gates have the oracle's pattern: at most one expert per group
        with torch.no_grad(), moe.bypass():
            logits = router(adapter.embed_image(train["img"][:8]))
        gates = router.gates(logits)
        for group in moe.layout.groups:
            assert (gates[:, list(group.experts)].sum(1) <= 1).all()
        assert router.predict(logits).shape == (8, len(MARKET1501))


def test_train_command_end_to_end(synth_root, tmp_path, capsys):
    import json

    code = train_image_moe_main(["--task", "image", "--moe", "--root", str(synth_root),
                                 "--out", str(tmp_path / "out"), "--epochs", "2", "--p", "3",
                                 "--k", "2", "--height", "64", "--width", "32", "--depth", "2"])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["metrics"]) >= {"oracle", "learned:hard", "learned:soft", "none",
                                       "router_accuracy", "oracle_gap", "versus_host"}
    gains = summary["metrics"]["versus_host"]  # paired on the same queries, CI over identities
    assert set(gains) == {"oracle", "learned:hard", "learned:soft"}
    for gain in gains.values():
        assert gain["low"] <= gain["ap_gain"] <= gain["high"] and gain["identities"] >= 2
        assert abs(gain["ap_gain"]) <= 1.0
    assert len(summary["history"]) == 2
    assert (tmp_path / "out" / "checkpoint" / "experts" / "moe.json").exists()
    assert json.loads(capsys.readouterr().out)["experts"] == 35


def test_train_command_with_a_pixel_router(synth_root, tmp_path):
    """``--router pixels``: the CNN router is fit first, saved with the experts, and scored on
    the query split like the feature router."""
    import json

    code = train_image_moe_main(["--task", "image", "--moe", "--root", str(synth_root),
                                 "--out", str(tmp_path / "out"), "--epochs", "1", "--p", "3",
                                 "--k", "2", "--height", "64", "--width", "32", "--depth", "2",
                                 "--router", "pixels", "--router-epochs", "2"])
    assert code == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert set(summary["metrics"]["router_accuracy"]) == set(MARKET1501.names)
    assert set(summary["metrics"]["versus_host"]) == {"oracle", "learned:hard", "learned:soft"}
    heads = json.loads((tmp_path / "out" / "checkpoint" / "heads.json").read_text())
    assert heads["router"]["reads"] == "pixels"


def test_training_with_fewer_identities_than_p_is_a_clear_error():
    import torch.nn as nn

    from reid_explain.errors import InputError
    from reid_explain.moe.train import train_image_moe

    train = {"img": torch.zeros(4, 3, 8, 8), "pid": torch.tensor([0, 0, 1, 1]),
             "camid": torch.zeros(4, dtype=torch.long), "attributes": torch.zeros(4, 1)}
    with pytest.raises(InputError, match="2 identities, fewer than P=8"):
        train_image_moe(None, train, nn.Linear(2, 2), p=8)


def test_a_pixel_router_learns_attributes_from_the_image_alone():
    """PixelRouter (issue 28): fit with train_router on SynthPedes renders, it reads upper
    colour on identities it never saw far above chance, routes with one host pass (no
    expert-free first pass) and gives the oracle's gate pattern."""
    from reid_explain.attributes.causal import attribute_codes_of
    from reid_explain.core.inputs import normalised_images
    from reid_explain.moe.routers import PixelRouter, router_logits
    from reid_explain.moe.train import router_accuracy, train_router
    from reid_explain.synthpedes.planning import SynthConfig, plan, render_sample

    # 120 identities: with 60 the held-out accuracy depended on the seed (data seeds 3-7:
    # 0.07-0.54, two of six runs under the bound); with 120, data seeds 3, 4, 6 and 8-14: 0.57-0.78
    synth = plan(SynthConfig(n_ids=120, images_per_id=6, seed=3, height=64, width=32))
    specs = [s for s in synth.samples if s.pid != 0]
    people = [synth.identity_of(s) for s in specs]
    images = normalised_images([render_sample(synth, s, with_captions=False).rendered.image
                                for s in specs], (0.5,) * 3, (0.5,) * 3)
    codes = attribute_codes_of(people)
    train_ids = set(synth.train_pids)
    is_train = torch.tensor([s.pid in train_ids for s in specs])
    train = {"img": images[is_train], "attributes": codes[is_train]}
    held_out = {"img": images[~is_train], "attributes": codes[~is_train]}

    model, adapter, moe = make("timm")
    moe.apply()
    torch.manual_seed(0)
    router = PixelRouter(moe.layout, channels=(12, 24, 32))
    before = router_accuracy(moe, router, held_out)["upper_color"]
    history = train_router(moe, router, train, epochs=8, lr=3e-3)
    after = router_accuracy(moe, router, held_out)
    assert history[-1]["router"] < 0.5 * history[0]["router"]
    # 8 colours, chance 1/8 (the untrained router: 0.09-0.16); 0.71 here after 8 epochs
    assert after["upper_color"] > max(0.45, before + 0.3), (before, after)
    assert not router.training
    calls = []
    handle = model.blocks[0].register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        _, logits = learned_embed(moe, router, held_out["img"][:4])
        learned_embed(moe, LearnedRouter(moe.layout, 192), held_out["img"][:4])
    handle.remove()
    assert len(calls) == 1 + 2  # pixels: one pass; features: an expert-free pass, then routed
    assert torch.equal(logits, router_logits(moe, router, held_out["img"][:4]))
    gates = router.gates(logits)
    for group in moe.layout.groups:
        assert (gates[:, list(group.experts)].sum(1) <= 1).all()
    moe.remove()
