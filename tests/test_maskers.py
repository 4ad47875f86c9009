"""Maskers: pixel maskers change only the removed cells, exactly; token dropping equals the
host run on the shorter sequence (checked against attention masking of the full sequence)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import images, make_plain, make_timm_vit, make_tiny_clip
from torchvision.transforms.functional import gaussian_blur

from reid_explain import AdapterError, explainify
from reid_explain.plugin_api.manager import get
from reid_explain.plugin_api.masker import grid_to_pixels


def _masks(n: int = 4, grid=(8, 4), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    masks = torch.rand(n, *grid, generator=g) < 0.4
    masks[0] = False  # one image with nothing removed
    return masks


def _masker(name: str, **options):
    return get("maskers", name).obj(**options)


@pytest.mark.parametrize("name", ["mean", "blur", "noise"])
def test_pixel_maskers_touch_only_removed_cells(name):
    x, masks = images(4), _masks()
    pixels = grid_to_pixels(masks, (64, 32)).expand_as(x)
    out = _masker(name, seed=5)(x, masks)
    assert out.shape == x.shape
    assert torch.equal(out[~pixels], x[~pixels])
    assert torch.equal(out[0], x[0])
    if name == "mean":
        expected = torch.zeros_like(x)
    elif name == "blur":
        expected = gaussian_blur(x, kernel_size=[31, 31], sigma=[5.0, 5.0])
    else:
        expected = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    assert torch.equal(out[pixels], expected[pixels])
    assert not torch.equal(out[pixels], x[pixels])


def test_masker_options():
    x, masks = images(4), _masks()
    pixels = grid_to_pixels(masks, (64, 32)).expand_as(x)
    out = _masker("mean", value=-1.5)(x, masks)
    assert (out[pixels] == -1.5).all()
    out = _masker("blur", sigma=1.0)(x, masks)
    expected = gaussian_blur(x, kernel_size=[7, 7], sigma=[1.0, 1.0])
    assert torch.equal(out[pixels], expected[pixels])
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(7)) * 0.5
    out = _masker("noise", std=0.5, seed=7, additive=True)(x, masks)
    assert torch.equal(out[pixels], (x + noise)[pixels])
    with pytest.raises(ValueError, match="sigma"):
        _masker("blur", sigma=0)(x, masks)


def test_noise_is_reproducible_through_its_generator():
    x, masks = images(3), _masks(3)
    a, b = _masker("noise", seed=3), _masker("noise", seed=3)
    first = a(x, masks)
    assert torch.equal(first, b(x, masks))
    assert not torch.equal(first, a(x, masks))  # the generator moves on
    g = torch.Generator().manual_seed(3)
    assert torch.equal(first, _masker("noise", generator=g)(x, masks))


def test_blur_kernel_fits_small_images():
    x = images(2, size=(8, 4))
    masks = torch.ones(2, 2, 1, dtype=torch.bool)
    out = _masker("blur", sigma=5.0)(x, masks)  # a 31-wide kernel would not fit a 4-wide image
    assert torch.equal(out, gaussian_blur(x, kernel_size=[7, 7], sigma=[5.0, 5.0]))


# -- token dropping ---------------------------------------------------------------------------
def _keep_mask(drop: torch.Tensor, prefix: int) -> torch.Tensor:
    """(B, N) additive attention mask over keys: -inf on dropped patch tokens."""
    keys = torch.cat([torch.zeros(drop.shape[0], prefix, dtype=torch.bool), drop], dim=1)
    return torch.zeros(keys.shape).masked_fill(keys, float("-inf"))


def _timm_masked_attention(model, x, drop):
    """The full sequence with dropped tokens masked out of every attention: the kept tokens
    (the class token among them) then compute exactly what the shorter sequence computes."""
    mask = _keep_mask(drop, model.num_prefix_tokens)[:, None, None, :]
    return model.forward_head(model.forward_features(x, attn_mask=mask), pre_logits=True)


def _clip_masked_attention(model, x, drop):
    v = model.visual
    heads = v.transformer.resblocks[0].attn.num_heads
    keys = _keep_mask(drop, 1)
    n = keys.shape[1]
    mask = keys[:, None, None, :].expand(-1, heads, n, -1).reshape(-1, n, n)
    tokens = v.transformer(v._embeds(x), attn_mask=mask)
    pooled, _ = v._pool(tokens)
    return pooled @ v.proj


def _equal_count_drops(n: int, cells: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, cells, generator=g).argsort(dim=1)[:, :k]
    return torch.zeros(n, cells, dtype=torch.bool).scatter_(1, idx, True)


@pytest.mark.parametrize("make,reference", [(make_timm_vit, _timm_masked_attention),
                                            (make_tiny_clip, _clip_masked_attention)])
def test_token_drop_equals_shorter_sequence(make, reference):
    model = make()
    x = images(3)
    with explainify(model) as exp, torch.no_grad():
        adapter = exp.adapter
        assert "token_drop" in adapter.capabilities
        h, w = adapter.grid_size((64, 32))
        nothing = torch.zeros(3, h * w, dtype=torch.bool)
        full = adapter.embed_image(x)
        torch.testing.assert_close(adapter.embed_image_without(x, nothing), full,
                                   atol=1e-5, rtol=0)
        for k in (1, h * w // 2, h * w):
            drop = _equal_count_drops(3, h * w, k, seed=k)
            dropped = adapter.embed_image_without(x, drop)
            torch.testing.assert_close(dropped, reference(model, x, drop), atol=1e-5, rtol=0)
            if k < h * w:
                assert (dropped - full).abs().max() > 1e-3
        uneven = nothing.clone()
        uneven[0, 0] = True
        with pytest.raises(AdapterError, match="same number"):
            adapter.embed_image_without(x, uneven)
    assert not model.visual.patch_dropout._forward_hooks if hasattr(model, "visual") else \
        not model.patch_drop._forward_hooks


def test_token_drop_masker_groups_rows_by_count():
    model = make_timm_vit()
    x = images(5)
    masks = torch.zeros(5, 4, 2, dtype=torch.bool)
    masks[1, 0, 0] = masks[3, 1, 1] = True  # counts 0, 1, 0, 1, 0
    masks[4, :2] = True  # count 4
    with explainify(model) as exp:
        masker = _masker("token_drop")
        emb = masker.embed(exp, x, masks, batch_size=2)
        with torch.no_grad():
            expected = torch.cat([exp.adapter.embed_image_without(x[i:i + 1],
                                                                  masks[i].flatten()[None])
                                  for i in range(5)])
    torch.testing.assert_close(emb, F.normalize(expected, dim=-1), atol=1e-5, rtol=0)
    with pytest.raises(TypeError, match="embed"):
        masker(x, masks)


def test_token_drop_masker_one_pass_per_count_and_chunk():
    model = make_timm_vit()
    passes = []
    handle = model.patch_embed.register_forward_hook(lambda _m, a, _o: passes.append(len(a[0])))
    x = images(5)
    masks = torch.zeros(5, 4, 2, dtype=torch.bool)
    masks[1, 0, 0] = masks[3, 1, 1] = True
    masks[4, :2] = True
    with explainify(model) as exp:
        _masker("token_drop").embed(exp, x, masks, batch_size=2)
        passes_by_two = list(passes)
        passes.clear()
        _masker("token_drop").embed(exp, x, masks, batch_size=1)
    handle.remove()
    assert len(passes) == 5
    passes = passes_by_two
    assert sorted(passes) == [1, 2, 2]  # drop counts 0, 1, 0, 1, 4: one pass per count


def test_token_drop_needs_a_vit():
    with explainify(make_plain(), layer="trunk") as exp:
        assert "token_drop" not in exp.adapter.capabilities
        with pytest.raises(AdapterError, match="ViT"):
            _masker("token_drop").embed(exp, images(1), torch.zeros(1, 16, 8, dtype=torch.bool))
