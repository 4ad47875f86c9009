"""Inputs are checked and normalised before the host sees them: what a careless caller passes
either becomes what the host takes, or a clear InputError naming it (never a raw torch error
from inside the model)."""

from __future__ import annotations

import pytest
import torch
from conftest import images, make_osnet, make_tiny_clip
from hygiene import HOOK_DICTS, host_state
from torch import nn

from reid_explain import explainify
from reid_explain.errors import InputError


@pytest.fixture(scope="module")
def osnet():
    return make_osnet()


@pytest.fixture(autouse=True)
def host_unchanged(request):
    """Every test here: the host leaves with the same weights, modes, hooks and modules."""
    if "osnet" not in request.fixturenames:
        yield
        return
    model = request.getfixturevalue("osnet")
    before = host_state(model)
    yield
    assert host_state(model) == before


def test_grey_and_other_float_dtypes_become_what_the_host_takes(osnet):
    q, g = images(2, (128, 64), seed=1), images(3, (128, 64), seed=2)
    with explainify(osnet) as exp:
        grey = q[:, :1]
        expected = exp.explain(grey.repeat(1, 3, 1, 1), g, method="gradcam", top_k=2)
        got = exp.explain(grey, g, method="gradcam", top_k=2)
        assert torch.equal(got.pairs, expected.pairs)
        torch.testing.assert_close(got.query.maps, expected.query.maps)
        reference = exp.explain(q, g, method="gradcam", top_k=2)
        for dtype in (torch.float64, torch.float16):
            cast = exp.explain(q.to(dtype), g.to(dtype), method="gradcam", top_k=2)
            assert cast.query.maps.dtype == torch.float32
            torch.testing.assert_close(cast.query.maps, reference.query.maps,
                                       atol=5e-3 if dtype == torch.float16 else 1e-5,
                                       rtol=5e-2 if dtype == torch.float16 else 1e-5)


@pytest.mark.parametrize("size", [(17, 9), (1, 1), (0, 0)])
def test_images_smaller_than_the_host_can_map_are_refused(osnet, size):
    with explainify(osnet) as exp, pytest.raises(InputError, match=r"query: images of"):
        exp.explain(torch.zeros(1, 3, *size), images(1, (128, 64)))


def test_a_vit_takes_only_its_own_size():
    clip = make_tiny_clip()
    with explainify(clip) as exp, pytest.raises(InputError, match=r"images: images of 8x8; the "
                                                               r"host takes"):
        exp.embed(torch.zeros(1, 3, 8, 8))


@pytest.mark.parametrize("kwargs, message", [
    ({"top_k": 2.5}, r"top_k must be an integer, got 2\.5"),
    ({"top_k": True}, r"top_k must be an integer"),
    ({"pairs": [0, 1, 0]}, r"got 3 numbers, an odd count"),
    ({"pairs": [[0, 0.5]]}, r"pairs must hold integer indices, got fractional values"),
    ({"pairs": [[True, False]]}, r"pairs must hold integer indices, got torch\.bool"),
])
def test_top_k_and_pairs_must_be_integers(osnet, kwargs, message):
    with explainify(osnet) as exp, pytest.raises(InputError, match=message):
        exp.explain(images(1, (128, 64)), images(2, (128, 64)), **kwargs)


def test_sides_of_different_sizes_channels_or_a_meta_model_are_named(osnet):
    with explainify(osnet) as exp:
        with pytest.raises(InputError, match=r"query images are \(128, 64\) and gallery "
                                             r"images \(256, 128\)"):
            exp.explain(images(1, (128, 64)), images(1, (256, 128)))
        with pytest.raises(InputError, match=r"query has 2 channels; the host's first layer "
                                             r"takes 3"):
            exp.explain(torch.zeros(1, 2, 128, 64), images(1, (128, 64)))
    with torch.device("meta"):
        meta = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                             nn.Flatten())
    with explainify(meta, layer="0") as exp, pytest.raises(InputError, match="'meta' device"):
        exp.embed(images(1, (32, 16)))
    assert all(len(getattr(m, d)) == 0 for m in meta.modules() for d in HOOK_DICTS
               if hasattr(m, d))


def test_inputs_that_embed_to_zero_are_refused_not_explained_as_zero_maps():
    conv = nn.Conv2d(3, 4, 3, padding=1)
    nn.init.constant_(conv.weight, 1.0)
    nn.init.zeros_(conv.bias)
    host = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()
    before = host_state(host)
    dark = -torch.ones(2, 3, 32, 16)  # every activation negative: ReLU gives all zeros
    with explainify(host, layer="1") as exp:
        with pytest.raises(InputError, match=r"query item\(s\) \[0, 1\] embed to an all-zero "
                                             r"vector"):
            exp.explain(dark, images(1, (32, 16)).abs(), method="gradcam")
    assert host_state(host) == before
