"""Acceptance 2: each attribution equals a reference computed pair by pair or by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from captum.attr import IntegratedGradients, LayerGradCam, Occlusion
from conftest import images, make_osnet, make_timm_vit, make_tiny_clip, manual_timm_forward

from reid_explain import AdapterError, InputError, PluginError, explainify


def _cos_forward(embed, reference):
    return lambda x: F.cosine_similarity(embed(x), reference.expand(x.shape[0], -1), dim=-1)


@pytest.mark.parametrize("min_rows", [None, 0])
def test_batched_gradcam_equals_captum_pair_by_pair_on_cnn(min_rows):
    """At 128x64 an OSNet's last map is 8x4: by default Grad-CAM explains at the 16x8 stage
    before it (LayerCAM's finer stage); ``min_rows=0`` keeps the last map. Either way each
    pair's map is Captum's LayerGradCam at that layer."""
    from reid_explain.plugins.attributions.gradcam import gradcam_layer

    model = make_osnet()
    q, g = images(2, (128, 64)), images(3, (128, 64), seed=1)
    options = {} if min_rows is None else {"min_rows": min_rows}
    with explainify(model) as exp:
        result = exp.explain(q, g, method="gradcam", **options)
        assert len(result) == 6
        name = gradcam_layer(exp.adapter, (128, 64), **options)
        if min_rows == 0:
            assert name is None and result.query.maps.shape[-2:] == (8, 4)
            layer = exp.adapter.layer
        else:
            assert name == exp.adapter.stage_layers((128, 64))[0] != exp.adapter.layer_name
            assert result.query.maps.shape[-2:] == (16, 8)
            layer = dict(model.named_modules())[name]
            assert gradcam_layer(exp.adapter, (256, 128)) is None  # 16x8 there: the last map
        for p, (qi, gi) in enumerate(result.pairs.tolist()):
            with torch.no_grad():
                q_emb, g_emb = model(q[qi: qi + 1]), model(g[gi: gi + 1])
            ref_q = LayerGradCam(_cos_forward(model, g_emb), layer).attribute(
                q[qi: qi + 1], relu_attributions=True)[0, 0]
            ref_g = LayerGradCam(_cos_forward(model, q_emb), layer).attribute(
                g[gi: gi + 1], relu_attributions=True)[0, 0]
            assert (result.query.maps[p] - ref_q).abs().max() <= 1e-5
            assert (result.gallery.maps[p] - ref_g).abs().max() <= 1e-5
            assert ref_q.abs().sum() > 0  # not trivially equal
        scores = F.normalize(model(q), dim=1) @ F.normalize(model(g), dim=1).T
        torch.testing.assert_close(result.scores, scores[result.pairs[:, 0], result.pairs[:, 1]]
                                   .detach(), atol=1e-5, rtol=1e-5)


def test_gradcam_on_vit_tokens_equals_manual_gradcam():
    """On ViT tokens: weights = mean over patches of d(score)/d(token), map = relu(sum_c w*a)."""
    vit = make_timm_vit()
    q, g = images(1), images(2, seed=1)
    layer = vit.blocks[-1].norm1
    with explainify(vit) as exp:
        result = exp.explain(q, g, method="gradcam", side="gallery")
        g_ref = None
        for p, (qi, gi) in enumerate(result.pairs.tolist()):
            saved = {}
            handle = layer.register_forward_hook(
                lambda m, a, o, store=saved: store.setdefault("a", o))
            with torch.no_grad():
                g_ref = vit(q[qi: qi + 1])
            saved.clear()
            score = F.cosine_similarity(vit(g[gi: gi + 1]), g_ref, dim=-1).sum()
            handle.remove()
            tokens = saved["a"][:, 1:]
            grad = torch.autograd.grad(score, saved["a"])[0][:, 1:]
            weights = grad.mean(dim=1, keepdim=True)
            manual = (weights * tokens).sum(-1).clamp(min=0).view(4, 2)
            assert (result.gallery.maps[p] - manual).abs().max() <= 1e-5
        assert result.query is None


def test_rollout_equals_reference_implementation():
    vit = make_timm_vit()
    x = images(2)
    with torch.no_grad():
        emb, attentions = manual_timm_forward(vit, x)
        torch.testing.assert_close(emb, vit(x), atol=1e-5, rtol=1e-5)
    # the textbook recipe: mean over heads, add identity, renormalise rows, multiply
    reference = torch.eye(9).expand(2, 9, 9)
    for attn in attentions:
        a = attn.mean(dim=1) + torch.eye(9)
        a = a / a.sum(dim=-1, keepdim=True)
        reference = a @ reference
    expected = reference[:, 0, 1:].reshape(2, 4, 2)
    with explainify(vit) as exp:
        result = exp.explain(x, images(1, seed=3), method="rollout", side="query")
    assert (result.query.maps - expected).abs().max() <= 1e-5


def test_attention_relevance_equals_reference_implementation():
    vit = make_timm_vit()
    q, g = images(2), images(1, seed=4)
    with torch.no_grad():
        ref_emb = vit(g)
    emb, attentions = manual_timm_forward(vit, q)
    F.cosine_similarity(emb, ref_emb.expand(2, -1), dim=-1).sum().backward()
    relevance = torch.eye(9).expand(2, 9, 9)
    for attn in attentions:
        cam = (attn.grad * attn).clamp(min=0).mean(dim=1)
        relevance = relevance + cam @ relevance
    expected = relevance[:, 0, 1:].reshape(2, 4, 2).detach()
    with explainify(vit) as exp:
        result = exp.explain(q, g, method="attention_relevance", side="query")
    assert (result.query.maps - expected).abs().max() <= 1e-5
    assert expected.abs().sum() > 0


def test_attention_relevance_on_open_clip_uses_attention_gradients():
    clip = make_tiny_clip()
    with explainify(clip) as exp:
        a = exp.explain(images(1), images(2, seed=1), method="attention_relevance")
        b = exp.explain(images(1), images(2, seed=1), method="rollout")
    assert a.query.maps.shape == (2, 8, 4)
    # relevance depends on the pair explained, rollout does not
    assert not torch.allclose(a.query.maps[0], a.query.maps[1])
    torch.testing.assert_close(b.query.maps[0], b.query.maps[1])


def test_occlusion_equals_captum_occlusion_on_patch_windows():
    clip = make_tiny_clip()
    q, g = images(2), images(2, seed=1)
    with explainify(clip) as exp:
        result = exp.explain(q, g, method="occlusion", pairs=[(0, 1), (1, 0)])
    for p, (qi, gi) in enumerate(result.pairs.tolist()):
        with torch.no_grad():
            g_emb = clip.encode_image(g[gi: gi + 1])
        reference = Occlusion(_cos_forward(clip.encode_image, g_emb)).attribute(
            q[qi: qi + 1], sliding_window_shapes=(3, 8, 8), strides=(3, 8, 8), baselines=0.0)
        assert (result.query.maps[p] - reference[0, 0, ::8, ::8]).abs().max() <= 1e-5


def test_integrated_gradients_equals_captum_and_is_complete():
    model = make_osnet()
    q, g = images(1, (128, 64)), images(2, (128, 64), seed=1)
    with explainify(model) as exp:
        result = exp.explain(q, g, method="integrated_gradients", side="query", n_steps=16)
    for p, (qi, gi) in enumerate(result.pairs.tolist()):
        with torch.no_grad():
            g_emb = model(g[gi: gi + 1])
        forward = _cos_forward(model, g_emb)
        attr, delta = IntegratedGradients(forward).attribute(
            q[qi: qi + 1], n_steps=16, return_convergence_delta=True)
        assert (result.query.maps[p] - attr.sum(1)[0]).abs().max() <= 1e-5
        # completeness: attributions sum to f(x) - f(baseline), up to the quadrature error
        with torch.no_grad():
            gap = float(forward(q[qi: qi + 1]) - forward(torch.zeros_like(q[:1])))
        assert abs(float(result.query.maps[p].sum()) - gap) <= abs(float(delta)) + 1e-4


def test_text_side_token_relevance_is_complete():
    clip = make_tiny_clip()
    texts = ["a man in a red shirt and black trousers", "a woman carrying a black backpack"]
    with explainify(clip) as exp:
        result = exp.explain_text(texts, images(2), method="gradcam", text_method="token_ig",
                                  top_k=1)
        tokens = exp.adapter.tokenize(texts)
    assert result.image.maps.shape == (2, 8, 4)
    words = [w for w, _ in result.text.words(0)]
    assert words == texts[result.pairs[0, 0]].split()
    # IG completeness on the text side: relevance sums to score - score(word tokens -> pad)
    for p, (ti, ii) in enumerate(result.pairs.tolist()):
        with torch.no_grad():
            i_emb = F.normalize(clip.encode_image(images(2)[ii: ii + 1]), dim=-1)
            full = F.cosine_similarity(clip.encode_text(tokens[ti: ti + 1]), i_emb)
            special = torch.zeros_like(tokens[ti: ti + 1], dtype=torch.bool)
            end = int(tokens[ti].argmax())
            special[0, 0] = True
            special[0, end:] = True
            base = torch.where(special, tokens[ti: ti + 1], 0)
            empty = F.cosine_similarity(clip.encode_text(base), i_emb)
        assert abs(float(result.text.relevance[p].sum()) - float(full - empty)) < 5e-3
        assert float(result.text.relevance[p][special[0]].abs().sum()) == 0.0


def test_explain_validates_inputs():
    model = make_osnet()
    with explainify(model) as exp:
        bad = images(1, (128, 64))
        bad[0, 0, 0, 0] = float("nan")
        with pytest.raises(InputError, match="query contains NaN"):
            exp.explain(bad, images(1, (128, 64)))
        with pytest.raises(InputError, match=r"gallery must be \(B, C, H, W\)"):
            exp.explain(images(1, (128, 64)), torch.zeros(2, 5))
        with pytest.raises(InputError, match="side must be"):
            exp.explain(images(1, (128, 64)), images(1, (128, 64)), side="left")
        with pytest.raises(InputError, match="pairs index"):
            exp.explain(images(1, (128, 64)), images(1, (128, 64)), pairs=[(0, 3)])


def test_a_layer_the_host_lacks_is_named_and_leaves_the_host_as_it_was():
    """``layer=`` (Grad-CAM) and ``layers=`` (LayerCAM) name modules of the host: a name it
    lacks fails with that name and the host's class, before any hook is placed."""
    from hygiene import host_state

    model = make_osnet()
    before = host_state(model)
    q, g = images(1, (128, 64)), images(1, (128, 64), seed=1)
    with explainify(model) as exp:
        with pytest.raises(PluginError, match=r"gradcam: no module 'conv9' in OSNet"):
            exp.explain(q, g, method="gradcam", layer="conv9", pairs=[(0, 0)])
        stage = exp.adapter.layer_name
        with pytest.raises(PluginError, match=r"layercam: no module 'conv9', 'fc\.9' in OSNet"):
            exp.explain(q, g, method="layercam", layers=[stage, "conv9", "fc.9"], pairs=[(0, 0)])
    assert host_state(model) == before


def test_layercam_fuses_stages_of_positive_gradient_times_activation_by_hand():
    """LayerCAM = mean over stages of relu(dS/dA * A) summed over channels, each scaled to a
    maximum of 1 at the finest stage's grid; the stages are the spatial layer and the stage
    before it with a grid at most twice as fine."""
    model = make_osnet()
    q, g = images(2, (128, 64)), images(2, (128, 64), seed=1)
    with explainify(model) as exp:
        stages = exp.adapter.stage_layers((128, 64))
        assert stages[-1] == exp.adapter.layer_name and len(stages) == 2
        result = exp.explain(q, g, method="layercam", pairs=[(0, 1), (1, 0)], side="query")
        assert exp.explain(q, g, method="layercam", layers=[stages[-1]], pairs=[(0, 1)],
                           side="query").query.maps.shape[-2:] == exp.adapter.grid_size((128, 64))
    modules = dict(model.named_modules())
    for p, (qi, gi) in enumerate([(0, 1), (1, 0)]):
        with torch.no_grad():
            g_emb = model(g[gi: gi + 1])
        acts: dict[str, torch.Tensor] = {}
        handles = [modules[n].register_forward_hook(
            lambda _m, _a, out, n=n, store=acts: store.__setitem__(n, out)) for n in stages]
        x = q[qi: qi + 1]
        score = _cos_forward(model, g_emb)(x)
        for h in handles:
            h.remove()
        grads = torch.autograd.grad(score.sum(), [acts[n] for n in stages])
        maps = [(gr * acts[n]).clamp_min(0).sum(dim=1)[0] for gr, n in zip(grads, stages,
                                                                             strict=True)]
        finest = maps[0].shape
        fused = sum(F.interpolate((m / m.max())[None, None], size=finest, mode="bilinear",
                                  align_corners=False)[0, 0] for m in maps) / len(maps)
        assert (result.query.maps[p] - fused.detach()).abs().max() <= 1e-5
        assert fused.max() > 0


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward passes only positive gradients where the input was positive."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return (grad * (x > 0)).clamp_min(0)


class _GuidedReLUModule(torch.nn.Module):
    def forward(self, x):
        return _GuidedReLU.apply(x)


def _guided_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``model`` whose ReLUs pass only positive gradients (guided backprop)."""
    import copy

    guided = copy.deepcopy(model)
    for module in list(guided.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.ReLU):
                setattr(module, child_name, _GuidedReLUModule())
    return guided


def test_guided_gradcam_is_upsampled_gradcam_times_guided_backprop_by_hand():
    """Guided Grad-CAM = bilinear-upsampled Grad-CAM x guided-backprop input gradient, summed
    over colour channels and then its magnitude (or the other reductions), at the image's full
    resolution."""
    model = make_osnet()
    q, g = images(2, (128, 64)), images(2, (128, 64), seed=1)
    import warnings

    with explainify(model) as exp, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer_name = exp.adapter.layer_name
        result = exp.explain(q, g, method="guided_gradcam", pairs=[(0, 1), (1, 0)], side="query")
        signed = exp.explain(q, g, method="guided_gradcam", pairs=[(0, 1)], side="query",
                             channels="sum").query.maps
        per_channel = exp.explain(q, g, method="guided_gradcam", pairs=[(0, 1)], side="query",
                                  channels="sum_abs").query.maps
        with pytest.raises(PluginError, match="channels must be one of"):
            exp.explain(q, g, method="guided_gradcam", pairs=[(0, 1)], channels="max")
    assert result.query.maps.shape == (2, 128, 64)
    assert not [str(w.message) for w in caught]  # nothing for a user's terminal
    guided = _guided_copy(model)
    for p, (qi, gi) in enumerate([(0, 1), (1, 0)]):
        with torch.no_grad():
            g_emb = model(g[gi: gi + 1])
        layer = dict(model.named_modules())[layer_name]
        cam = LayerGradCam(_cos_forward(model, g_emb), layer).attribute(
            q[qi: qi + 1], relu_attributions=True)
        cam = F.interpolate(cam, size=(128, 64), mode="bilinear", align_corners=False)
        x = q[qi: qi + 1].clone().requires_grad_(True)
        grad = torch.autograd.grad(_cos_forward(guided, g_emb)(x).sum(), x)[0]
        expected = (cam * grad).detach()
        scale = float(expected.abs().sum(dim=1).max())  # random-init gradients are tiny
        assert scale > 0
        torch.testing.assert_close(result.query.maps[p] / scale,
                                   expected.sum(dim=1).abs()[0] / scale, atol=1e-4, rtol=0)
        if p == 0:
            torch.testing.assert_close(signed[0] / scale, expected.sum(dim=1)[0] / scale,
                                       atol=1e-4, rtol=0)
            torch.testing.assert_close(per_channel[0] / scale,
                                       expected.abs().sum(dim=1)[0] / scale, atol=1e-4, rtol=0)


def test_guided_layercam_is_upsampled_layercam_times_guided_backprop_by_hand():
    """Guided LayerCAM = the LayerCAM map (checked by hand above), bilinear-upsampled, times
    the guided-backprop input gradient, summed over colour channels, then its magnitude."""
    from reid_explain.report.image_section import image_methods

    model = make_osnet()
    q, g = images(2, (128, 64)), images(2, (128, 64), seed=1)
    with explainify(model) as exp:
        result = exp.explain(q, g, method="guided_layercam", pairs=[(0, 1), (1, 0)],
                             side="query")
        layercam = exp.explain(q, g, method="layercam", pairs=[(0, 1), (1, 0)],
                               side="query").query.maps
        with pytest.raises(PluginError, match="relu_attributions=False has no meaning"):
            exp.explain(q, g, method="guided_layercam", pairs=[(0, 1)],
                        relu_attributions=False)
        assert "guided_layercam" not in image_methods(exp, None)  # by name only
    assert result.query.maps.shape == (2, 128, 64) and layercam.shape[-2:] != (128, 64)
    guided = _guided_copy(model)
    for p, (qi, gi) in enumerate([(0, 1), (1, 0)]):
        with torch.no_grad():
            g_emb = model(g[gi: gi + 1])
        x = q[qi: qi + 1].clone().requires_grad_(True)
        grad = torch.autograd.grad(_cos_forward(guided, g_emb)(x).sum(), x)[0]
        cam = F.interpolate(layercam[p][None, None], size=(128, 64), mode="bilinear",
                            align_corners=False)
        expected = (cam * grad).detach().sum(dim=1).abs()[0]
        scale = float(expected.max())
        assert scale > 0
        torch.testing.assert_close(result.query.maps[p] / scale, expected / scale, atol=1e-4,
                                   rtol=0)


def test_sharpen_raises_the_positive_part_to_a_power_for_any_method():
    q, g = images(1, (128, 64)), images(2, (128, 64), seed=1)
    with explainify(make_osnet()) as exp:
        plain = exp.explain(q, g, method="integrated_gradients", n_steps=4).query.maps
        sharp = exp.explain(q, g, method="integrated_gradients", n_steps=4,
                            sharpen=3).query.maps
        with pytest.raises(InputError, match="sharpen"):
            exp.explain(q, g, method="gradcam", sharpen=-1)
    assert (plain < 0).any()  # signed: the negative part is dropped
    peak = plain.clamp_min(0).flatten(1).amax(dim=1)[:, None, None]
    torch.testing.assert_close(sharp, peak * (plain.clamp_min(0) / peak).pow(3), rtol=1e-5,
                               atol=1e-12)
    assert torch.equal(sharp.flatten(1).amax(dim=1), peak.flatten())  # each keeps its maximum
    # random-init attributions are ~1e-3 or smaller: a power of 16 taken as is underflows
    with explainify(make_osnet()) as exp:
        steep = exp.explain(q, g, method="integrated_gradients", n_steps=4, sharpen=16)
    positive = plain.clamp_min(0)
    assert float(positive.max()) ** 16 < 1e-38
    assert (steep.query.maps > 0).sum() >= 10


def _patch_outputs(clip, images_, attention):
    """Patch embeddings after the last block's input went through ``attention`` (a copy of the
    block's own ``nn.MultiheadAttention`` called by torch), then ``ln_post`` and ``proj``."""
    seen = {}
    block = clip.visual.transformer.resblocks[-1]
    handle = block.register_forward_pre_hook(lambda _m, a: seen.__setitem__("x", a[0]))
    with torch.no_grad():
        clip.encode_image(images_)
        handle.remove()
        out = attention(block.ln_1(seen["x"]))
        return (clip.visual.ln_post(out) @ clip.visual.proj)[:, 1:]


@pytest.mark.parametrize("features", ["value", "kk", "vv"])
def test_dense_embeddings_equal_torch_attention_with_the_mixing_replaced(features):
    import copy

    clip = make_tiny_clip()
    x = images(3)
    exp = explainify(clip)
    with torch.no_grad():
        dense = exp.adapter.dense_embeddings(x, features=features)
    attn = copy.deepcopy(clip.visual.transformer.resblocks[-1].attn)
    width = attn.embed_dim
    q, k, v = attn.in_proj_weight.data.split(width)
    qb, kb, vb = attn.in_proj_bias.data.split(width)
    if features == "value":  # each token attends to itself only: the output is out_proj(v)
        n = dense.shape[1] + 1
        blocked = ~torch.eye(n, dtype=torch.bool)
        expected = _patch_outputs(clip, x, lambda y: attn(y, y, y, need_weights=False,
                                                          attn_mask=blocked)[0])
    else:  # queries and keys both replaced by the chosen projection: softmax(a a^T) v
        a, ab = (k, kb) if features == "kk" else (v, vb)
        attn.in_proj_weight.data = torch.cat([a, a, v])
        attn.in_proj_bias.data = torch.cat([ab, ab, vb])
        expected = _patch_outputs(clip, x, lambda y: attn(y, y, y, need_weights=False)[0])
    assert dense.shape == (3, 8 * 4, clip.visual.proj.shape[1])
    torch.testing.assert_close(dense, expected, rtol=1e-4, atol=1e-5)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in clip.modules())


def test_dense_similarity_scores_each_patch_embedding_with_the_target():
    from reid_explain.plugin_api.targets import CosineSimilarity

    clip = make_tiny_clip()
    x = images(2)
    exp = explainify(clip)
    reference = torch.randn(2, clip.visual.proj.shape[1],
                            generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        dense = exp.adapter.dense_embeddings(x, features="tokens", block=-1)
        hooked = {}
        handle = clip.visual.transformer.register_forward_hook(
            lambda _m, _a, out: hooked.__setitem__("x", out))
        clip.encode_image(x)
        handle.remove()
    # "tokens" at the last block are the transformer's own output tokens, projected
    tokens = clip.visual.ln_post(hooked["x"]) @ clip.visual.proj
    torch.testing.assert_close(dense, tokens[:, 1:])
    raw = exp.attribute(x, CosineSimilarity(reference), method="dense_similarity",
                        features="tokens", temperature=None)
    expected = F.cosine_similarity(dense, reference[:, None], dim=-1).reshape(2, 8, 4)
    torch.testing.assert_close(raw, expected, rtol=1e-5, atol=1e-6)
    soft = exp.attribute(x, CosineSimilarity(reference), method="dense_similarity",
                         features="tokens", temperature=0.05)
    torch.testing.assert_close(soft, (expected.flatten(1) / 0.05).softmax(1).reshape(2, 8, 4))
    # the plugin's error reaches the caller named, wrapped by the engine as a plugin error
    with pytest.raises(PluginError, match="features must be one of"):
        exp.attribute(x, CosineSimilarity(reference), method="dense_similarity", features="x")
    with pytest.raises(PluginError, match="block 5 is outside"):
        exp.attribute(x, CosineSimilarity(reference), method="dense_similarity", block=5)
    with pytest.raises(PluginError, match="temperature must be positive"):
        exp.attribute(x, CosineSimilarity(reference), method="dense_similarity", temperature=0)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in clip.modules())


class _FunctionalReluNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.head = torch.nn.Conv2d(8, 8, 3, stride=2, padding=1)

    def forward(self, x):
        return F.relu(self.head(F.relu(self.conv(x)))).mean(dim=(2, 3))


def test_guided_gradcam_refuses_a_host_without_relu_modules():
    """Guided backpropagation rewrites nn.ReLU gradients only: on functional ReLUs (or ReLU6,
    GELU) it would be plain gradients under the guided name. Such a host lacks the adapter's
    "relu" capability, so reports leave the method out and a direct call is refused; the
    plugin refuses too when called on a host by hand."""
    from reid_explain.plugin_api.manager import get

    with explainify(_FunctionalReluNet(), layer="head") as exp:
        assert "stages" in exp.adapter.capabilities and "relu" not in exp.adapter.capabilities
        with pytest.raises(AdapterError, match="needs \\['relu'\\]"):
            exp.explain(images(1), images(1, seed=1), method="guided_gradcam", top_k=1)
        plugin = get("attributions", "guided_gradcam").obj(exp.adapter)
        with pytest.raises(ValueError, match="no nn.ReLU module"):
            plugin.attribute(images(1), lambda e: e.sum(dim=1))
    with explainify(make_osnet()) as exp:
        assert "relu" in exp.adapter.capabilities


@pytest.mark.parametrize("make", [make_timm_vit, make_tiny_clip], ids=["timm", "open_clip"])
def test_relevance_ig_is_upsampled_relevance_times_positive_captum_ig(make):
    """``relevance_ig`` = bilinear-upsampled attention relevance (>= 0) x the positive part of
    Captum's integrated gradients summed over colours, per pixel; offered by name only."""
    from reid_explain.report.image_section import image_methods

    model = make()
    q, g = images(2), images(1, seed=4)
    with explainify(model) as exp:
        got = exp.explain(q, g, method="relevance_ig", side="query")  # default: 8 steps
        relevance = exp.explain(q, g, method="attention_relevance", side="query").query.maps
        assert "relevance_ig" not in image_methods(exp, None)  # costly: never by default
        assert image_methods(exp, ["relevance_ig"]) == ["relevance_ig"]
        with torch.no_grad():
            reference = exp.adapter.embed_image(g)
        ig = IntegratedGradients(_cos_forward(exp.adapter.embed_image, reference)).attribute(
            q, n_steps=8, method="gausslegendre").sum(dim=1)
    coarse = F.interpolate(relevance[:, None], size=q.shape[-2:], mode="bilinear",
                           align_corners=False)[:, 0]
    expected = coarse.clamp_min(0) * ig.clamp_min(0)
    assert got.query.maps.shape == (2, *q.shape[-2:])
    torch.testing.assert_close(got.query.maps, expected, atol=1e-6, rtol=1e-4)
    assert (expected > 0).float().mean() > 0.05  # not trivially zero on both sides
