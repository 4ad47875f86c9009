"""Gallery features stored once and reused: same results, no second gallery pass, and never
reused for other weights or other images."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import images, make_osnet

from reid_explain import explainify
from reid_explain.errors import InputError
from reid_explain.evaluation.feature_cache import FeatureCache
from reid_explain.evaluation.protocol import ReidEvalSet


def _data(gallery_seed: int = 1) -> ReidEvalSet:
    return ReidEvalSet(query=images(3, (128, 64), seed=0), query_pids=np.array([1, 2, 3]),
                       query_camids=np.array([0, 0, 0]),
                       gallery=images(5, (128, 64), seed=gallery_seed),
                       gallery_pids=np.array([1, 2, 3, 3, 4]),
                       gallery_camids=np.array([1, 1, 1, 2, 1]))


def _evaluate(exp, data, cache) -> tuple[pd.DataFrame, int]:
    """The per-query table and the number of images the host embedded without gradients."""
    seen = []
    handle = exp.model.register_forward_hook(
        lambda m, args, out: seen.append(len(args[0])) if not torch.is_grad_enabled() else None)
    try:
        result = exp.evaluate(data, method="gradcam", metrics=["masking_drop"],
                              random_baseline=False, progress=False, feature_cache=cache)
    finally:
        handle.remove()
    return result.table, sum(seen)


def test_second_run_loads_the_gallery_instead_of_embedding_it(tmp_path):
    data = _data()
    with explainify(make_osnet()) as exp:
        plain, _ = _evaluate(exp, data, None)  # first: the adapter's one-off size probe
        first, embedded_first = _evaluate(exp, data, tmp_path)
        second, embedded_second = _evaluate(exp, data, tmp_path)
    files = list(tmp_path.glob("gallery-*.safetensors"))
    assert len(files) == 1
    # the first run embeds the 5 gallery images; the second only what the queries need
    assert embedded_first - embedded_second == 5
    pd.testing.assert_frame_equal(first, second)
    pd.testing.assert_frame_equal(first, plain)


def test_other_weights_or_other_images_do_not_reuse_the_features(tmp_path):
    data = _data()
    model = make_osnet()
    with explainify(model) as exp:
        _evaluate(exp, data, tmp_path)
        _evaluate(exp, _data(gallery_seed=7), tmp_path)
        assert len(list(tmp_path.glob("gallery-*.safetensors"))) == 2
        with torch.no_grad():
            next(model.parameters()).add_(0.01)
        _, embedded = _evaluate(exp, data, tmp_path)
    assert embedded >= 5  # recomputed: the stored features belong to the old weights
    assert len(list(tmp_path.glob("gallery-*.safetensors"))) == 3


def test_a_damaged_file_is_recomputed_and_replaced(tmp_path):
    data = _data()
    with explainify(make_osnet()) as exp:
        reference, _ = _evaluate(exp, data, tmp_path)
        (path,) = tmp_path.glob("gallery-*.safetensors")
        path.write_bytes(path.read_bytes()[:50])
        again, embedded = _evaluate(exp, data, tmp_path)
    assert embedded >= 5
    pd.testing.assert_frame_equal(reference, again)
    assert path.stat().st_size > 50  # rewritten whole


def test_stored_key_is_compared_not_only_its_hash(tmp_path):
    cache = FeatureCache(tmp_path)
    features = torch.randn(4, 8)
    path = cache.save("gallery", {"model": "a"}, features)
    assert torch.equal(cache.load("gallery", {"model": "a"}), features)
    other = cache.path("gallery", {"model": "b"})
    other.write_bytes(path.read_bytes())  # a file under b's name holding a's key
    assert cache.load("gallery", {"model": "b"}) is None


def test_a_file_in_place_of_the_cache_folder_is_refused(tmp_path):
    (tmp_path / "features").write_text("not a folder")
    with pytest.raises(InputError, match="is a file, not a folder"):
        FeatureCache(tmp_path / "features")
