"""Acceptance 1: explainify picks the right adapter for each host family."""

from __future__ import annotations

import pytest
import torch
from conftest import images, make_osnet, make_plain, make_timm_vit, make_tiny_clip
from torch import nn

from reid_explain import AdapterError, UnknownPluginError, explainify


def test_torchreid_osnet_and_resnet50():
    import torchreid

    osnet = make_osnet()
    with explainify(osnet) as exp:
        assert exp.adapter.name == "torchreid"
        assert exp.adapter.layer_name == "conv5"
        assert exp.adapter.grid_size((256, 128)) == (16, 8)
    resnet = torchreid.models.build_model("resnet50", num_classes=5, pretrained=False)
    with explainify(resnet) as exp:
        assert exp.adapter.name == "torchreid"
        assert exp.adapter.layer_name == "layer4"
        assert exp.adapter.grid_size((256, 128)) == (8, 4)
        emb = exp.embed(torch.randn(2, 3, 256, 128))
        assert emb.shape == (2, 2048)
        torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))


def test_torchreid_both_layouts_match():
    """Upstream deep-person-reid puts models in torchreid.models.*, the PyPI package in
    torchreid.reid.models.*: both are recognised by module path."""
    from reid_explain.adapters.torchreid_models import TorchreidAdapter

    osnet = make_osnet()
    assert type(osnet).__module__.startswith("torchreid.reid.models.")
    upstream_cls = type("OSNet", (type(osnet),), {"__module__": "torchreid.models.osnet"})
    osnet.__class__ = upstream_cls
    assert TorchreidAdapter.matches(osnet)
    with explainify(osnet) as exp:
        assert exp.adapter.name == "torchreid"
    assert not TorchreidAdapter.matches(make_plain())


def test_open_clip_vit():
    clip = make_tiny_clip()
    with explainify(clip) as exp:
        assert exp.adapter.name == "open_clip"
        assert {"attention", "text"} <= exp.adapter.capabilities
        assert exp.adapter.grid_size((64, 32)) == (8, 4)
        assert len(exp.adapter.blocks()) == 2
        x = images(2)
        torch.testing.assert_close(exp.embed(x), torch.nn.functional.normalize(
            clip.encode_image(x), dim=-1).detach())
        with exp.adapter.capture_attention() as capture, torch.no_grad():
            exp.adapter.embed_image(x)
        maps = capture.maps()
        assert len(maps) == 2 and maps[0].shape == (2, 2, 33, 33)
        torch.testing.assert_close(maps[0].sum(-1), torch.ones(2, 2, 33))


def test_open_clip_attention_matches_manual_softmax():
    """The captured weights are softmax(q k^T / sqrt(d)) of the first block, per head."""
    clip = make_tiny_clip()
    visual = clip.visual
    x = images(1)
    with explainify(clip) as exp, torch.no_grad():
        with exp.adapter.capture_attention() as capture:
            exp.adapter.embed_image(x)
        tokens = visual.conv1(x).flatten(2).transpose(1, 2)
        cls = visual.class_embedding.expand(1, 1, -1)
        tokens = visual.ln_pre(torch.cat([cls, tokens], 1) + visual.positional_embedding)
        block = visual.transformer.resblocks[0]
        h = block.ln_1(tokens)
        q, k, _ = nn.functional.linear(h, block.attn.in_proj_weight,
                                       block.attn.in_proj_bias).chunk(3, dim=-1)
        heads = block.attn.num_heads
        q = q.view(1, -1, heads, 32).transpose(1, 2)
        k = k.view(1, -1, heads, 32).transpose(1, 2)
        manual = (q @ k.transpose(-1, -2) / 32 ** 0.5).softmax(-1)
    torch.testing.assert_close(capture.maps()[0], manual, atol=1e-5, rtol=1e-4)


def test_timm_vit_default_224():
    import timm

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0)
    with explainify(vit) as exp:
        assert exp.adapter.name == "timm_vit"
        assert exp.adapter.grid_size((224, 224)) == (14, 14)
        assert len(exp.adapter.blocks()) == 12


def test_timm_fused_attention_is_switched_off_and_restored():
    vit = make_timm_vit()
    assert all(b.attn.fused_attn for b in vit.blocks)
    with explainify(vit) as exp:
        with exp.adapter.capture_attention() as capture, torch.no_grad():
            assert not any(b.attn.fused_attn for b in vit.blocks)
            exp.adapter.embed_image(images(2))
        assert all(b.attn.fused_attn for b in vit.blocks)
        assert [m.shape for m in capture.maps()] == [(2, 3, 9, 9)] * 3


def test_plain_module_with_layer():
    model = make_plain()
    with explainify(model, layer="trunk") as exp:
        assert exp.adapter.name == "module"
        assert exp.adapter.grid_size((64, 32)) == (16, 8)
    with explainify(model, layer=model.trunk[2]) as exp:
        assert exp.adapter.grid_size((64, 32)) == (16, 8)


def test_plain_module_with_token_layer():
    """A user's ViT-like model: the named layer outputs (B, N, C) tokens with a class token."""
    vit = make_timm_vit()
    with explainify(vit, layer="blocks.2.norm1", adapter="module", num_prefix_tokens=1,
                    embed=lambda m, x: m(x)) as exp:
        assert exp.adapter.grid_size((64, 32)) == (4, 2)
        result = exp.explain(images(1), images(2, seed=1), method="gradcam")
        assert result.query.maps.shape == (2, 4, 2)


def test_linear_without_layer_gets_clear_error():
    with pytest.raises(AdapterError) as info:
        explainify(nn.Linear(4, 2))
    message = str(info.value)
    for name in ("torchreid", "open_clip", "timm_vit", "module"):
        assert name in message
    assert "layer=" in message and "Linear" in message


def test_unknown_adapter_name_and_layer():
    with pytest.raises(UnknownPluginError, match="known: .*open_clip"):
        explainify(make_plain(), adapter="nope")
    with pytest.raises(AdapterError, match="no submodule 'trunk.9'"):
        explainify(make_plain(), layer="trunk.9")
    with pytest.raises(AdapterError, match="needs a torch.nn.Module"):
        explainify("not a model")
