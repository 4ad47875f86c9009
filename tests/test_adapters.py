"""Acceptance 1: explainify picks the right adapter for each host family."""

from __future__ import annotations

import pytest
import torch
from conftest import CLIP_CFG, images, make_osnet, make_plain, make_timm_vit, make_tiny_clip
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


# -- the spatial layer, chosen over the whole module tree (issue 16) ---------------------------
def _torchreid_like(cls: type) -> type:
    """A user's model class in torchreid's module path (the torchreid adapter matches it)."""
    cls.__module__ = "torchreid.reid.models.user"
    return cls


@_torchreid_like
class StripesOnly(nn.Module):
    """Pools to 6x1 stripes before its only module: every map it has is degenerate."""

    def __init__(self) -> None:
        super().__init__()
        self.stripes = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return self.stripes(nn.functional.adaptive_avg_pool2d(x, (6, 1))).flatten(1)


@_torchreid_like
class FixedSize(nn.Module):
    """Asserts its input size in forward, as torchreid's HACNN does."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Conv2d(3, 8, 3, stride=2, padding=1),
                                     nn.Conv2d(8, 8, 3, stride=2, padding=1)])

    def forward(self, x):
        assert x.shape[-2:] == (160, 64), f"expected (160, 64), got {tuple(x.shape[-2:])}"
        for block in self.blocks:
            x = block(x).relu()
        return x.mean(dim=(2, 3))


def test_layer_search_enters_module_lists_and_skips_part_pooling():
    import torchreid

    mlfn = torchreid.models.build_model("mlfn", num_classes=5, pretrained=False)
    with explainify(mlfn) as exp:  # its blocks sit in a ModuleList: not the stem's maxpool
        assert exp.adapter.layer_name.startswith("feature.15.")
        assert exp.adapter.grid_size((256, 128)) == (8, 4)
    pcb = torchreid.models.build_model("pcb_p6", num_classes=5, pretrained=False)
    with explainify(pcb) as exp:  # layer4, not the 6x1 part pooling after it
        assert exp.adapter.layer_name == "layer4"
        assert exp.adapter.grid_size((256, 128)) == (16, 8)
        assert "layer='layer4'" in repr(exp) and "16x8 at 256x128" in repr(exp)


def test_degenerate_grid_warns_naming_the_layer_and_layer_option():
    with pytest.warns(UserWarning, match=r"'stripes' gives a 6x1 grid .*layer='name'"):
        explainify(StripesOnly()).close()
    with pytest.warns(UserWarning, match=r"'stripes' gives a 6x1 grid"):  # named: the same
        explainify(StripesOnly(), layer="stripes").close()


def test_probe_uses_declared_size_and_names_the_size_it_tried():
    with pytest.raises(AdapterError, match=r"256x128 probe image on cpu.*"
                                           r"AssertionError: expected \(160, 64\).*image_size="):
        explainify(FixedSize())
    with explainify(FixedSize(), image_size=(160, 64)) as exp:
        assert exp.adapter.layer_name == "blocks.1"
        assert exp.adapter.grid_size((160, 64)) == (40, 16)
    import torchreid

    hacnn = torchreid.models.build_model("hacnn", num_classes=5, pretrained=False)
    with pytest.raises(AdapterError, match="160x64 probe image"):  # declared: 160x64
        explainify(hacnn)


def _grad_cam(model_forward, layer: nn.Module, x: torch.Tensor, reference: torch.Tensor,
              channels_last: bool = False) -> torch.Tensor:
    """Grad-CAM before its ReLU, by hand: the cosine to ``reference`` differentiated w.r.t. the
    layer's output, channel weights = spatial mean of the gradient."""
    out: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, _a, o: out.append(o))
    try:
        score = nn.functional.cosine_similarity(model_forward(x), reference).sum()
    finally:
        handle.remove()
    act = out[-1].permute(0, 3, 1, 2) if channels_last else out[-1]
    (grad,) = torch.autograd.grad(score, out[-1])
    grad = grad.permute(0, 3, 1, 2) if channels_last else grad
    return (grad.mean(dim=(2, 3), keepdim=True) * act).sum(dim=1).detach()


def test_open_clip_cnn_tower_explains_images_and_captions():
    import open_clip

    torch.manual_seed(0)
    clip = open_clip.CLIP(embed_dim=32, vision_cfg={"image_size": 64, "layers": [1, 1, 1, 1],
                                                    "width": 8, "head_width": 8},
                          text_cfg=dict(CLIP_CFG["text_cfg"])).eval()
    x = images(2, size=(64, 64))
    captions = ["a man in a red shirt", "a woman with a black bag"]
    with explainify(clip) as exp:
        assert exp.adapter.name == "open_clip_cnn"
        assert exp.adapter.capabilities == {"text", "stages", "relu"}  # ModifiedResNet
        assert exp.adapter.layer_name == "visual.layer4"
        assert exp.adapter.input_size() == (64, 64)  # the attention pool's positions are fixed
        texts = exp.embed_text(captions)
        result = exp.explain_text(captions, x, pairs=[(0, 0), (1, 1)], relu_attributions=False,
                                  min_rows=0)  # the last map, 2x2 at 64x64
        assert result.image.maps.shape == (2, 2, 2)
        # by default a last map below 16 rows is explained at the stage before it
        finer = exp.explain_text(captions, x, pairs=[(0, 0)], relu_attributions=False)
        assert exp.adapter.stage_before((64, 64)) == "visual.layer3"
        assert finer.image.maps.shape == (1, 4, 4)
        assert result.text.relevance.abs().sum(dim=1).min() > 0
    expected = _grad_cam(clip.encode_image, clip.visual.layer4, x, texts)
    torch.testing.assert_close(result.image.maps, expected, rtol=1e-4, atol=1e-6)


def test_timm_cnn_and_swin_stages_are_explained_at_their_last_stage():
    import timm

    torch.manual_seed(0)
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    with explainify(resnet) as exp:
        assert (exp.adapter.name, exp.adapter.layer_name) == ("timm", "layer4")
        assert exp.adapter.input_size() is None and exp.adapter.grid_size((128, 64)) == (4, 2)
    swin = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, num_classes=0,
                             embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1)).eval()
    q, g = images(1, size=(224, 224)), images(1, size=(224, 224), seed=1)
    with explainify(swin) as exp:
        assert (exp.adapter.name, exp.adapter.layer_name) == ("timm", "layers.3")
        assert exp.adapter.input_size() == (224, 224)
        assert exp.adapter.grid_size((224, 224)) == (7, 7)
        result = exp.explain(q, g, method="gradcam", pairs=[(0, 0)], relu_attributions=False)
        g_emb = exp.embed(g)

    def embed(x):
        return swin.forward_head(swin.forward_features(x), pre_logits=True)

    expected = _grad_cam(embed, swin.layers[3], q, g_emb, channels_last=True)  # NHWC stages
    torch.testing.assert_close(result.query.maps, expected, rtol=1e-4, atol=1e-6)


def test_gradcams_finer_stage_is_one_that_every_path_runs_through():
    """A ResNet-50 at 128x64 ends in 4x2 cells; the last 8x4 tensor before it is inside layer4's
    first block (``layer4.0.bn1``), which the block's shortcut bypasses: the stage (Grad-CAM's,
    and LayerCAM's finer one) is ``layer3``, whose output everything after it reads."""
    import torchreid

    from reid_explain.plugins.attributions.gradcam import gradcam_layer

    torch.manual_seed(0)
    model = torchreid.models.build_model("resnet50", num_classes=8, pretrained=False).eval()
    x = images(2, (128, 64))
    with explainify(model) as exp:
        assert exp.adapter.grid_size((128, 64)) == (4, 2)
        # the last 8x4 tensor, inside layer4's first block, is bypassed by its shortcut
        assert not exp.adapter._all_paths_through("layer4.0.bn1", (128, 64))
        assert exp.adapter._all_paths_through("layer3", (128, 64))
        assert exp.adapter.stage_layers((128, 64)) == ["layer3", "layer4"]  # LayerCAM's too
        assert exp.adapter.stage_before((128, 64)) == gradcam_layer(exp.adapter, (128, 64)) \
            == "layer3"
        assert exp.explain(x[:1], x[1:], method="gradcam").query.maps.shape == (1, 8, 4)
        assert exp.explain(x[:1], x[1:], method="gradcam", min_rows=0).query.maps.shape == \
            (1, 4, 2)
        assert gradcam_layer(exp.adapter, (128, 64), min_rows=4) is None  # 4 rows suffice
    with explainify(make_plain(), layer="trunk") as exp:  # a 16x8 last map: Grad-CAM keeps it
        assert exp.adapter.grid_size((64, 32)) == (16, 8)
        assert gradcam_layer(exp.adapter, (64, 32)) is None
        assert gradcam_layer(exp.adapter, (32, 16)) == "trunk.1"  # 8x4: the 16x8 map before


class ZeroBranchNet(nn.Module):
    """A stem, then a block whose residual branch is zero at init (CLIP's and timm's ResNets
    zero their blocks' last norm) beside a 1x1 shortcut, then a ReLU module used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.shortcut = nn.Conv2d(8, 8, 1)
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.ReLU()
        nn.init.zeros_(self.branch.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        y = self.act(self.shortcut(s) + self.branch(s))
        return self.act(self.conv(y)).mean(dim=(2, 3))


def gradient_vanishes_without(model: nn.Module, module: nn.Module) -> bool:
    """The reading by gradient values: every output of ``module`` detached, does the
    embedding's gradient with respect to a random image vanish?"""
    handle = module.register_forward_hook(lambda _m, _a, out: out.detach())
    try:
        x = torch.randn(1, 3, 16, 8, generator=torch.Generator().manual_seed(0),
                        requires_grad=True)
        out = model(x)
        grad = torch.autograd.grad(out.sum(), x, allow_unused=True)[0] \
            if out.requires_grad else None
    finally:
        handle.remove()
    return grad is None or not bool(grad.abs().max() > 0)


def test_every_path_is_read_from_the_graph_not_from_gradients_that_happen_to_vanish():
    """The shortcut carries all of the gradient at init (the branch is zero) yet the branch is
    a path around it: neither is a stage; the stem is. A module run twice counts when all of
    its outputs together cut every path. Where the gradient values cannot mislead (a random
    branch), the graph's answer is the detach-and-backward one, name by name."""
    from reid_explain.adapters._cnn import modules_every_path_runs_through

    torch.manual_seed(0)
    model = ZeroBranchNet().eval()
    names = ["stem", "branch", "shortcut", "conv", "act"]
    assert modules_every_path_runs_through(model, model, names, (16, 8)) == \
        {"stem", "conv", "act"}
    assert gradient_vanishes_without(model, model.shortcut)  # what values alone would say
    with torch.no_grad():
        model.branch.weight.normal_()
    assert modules_every_path_runs_through(model, model, names, (16, 8)) == \
        {"stem", "conv", "act"} == {n for n in names
                                    if gradient_vanishes_without(model, getattr(model, n))}
    # a module run twice whose outputs cut only together: the branch's and the shortcut's
    model.shortcut, model.branch = model.branch, model.branch
    assert "branch" in modules_every_path_runs_through(model, model, ["branch"], (16, 8))
    assert not any(m._forward_hooks for m in model.modules())
