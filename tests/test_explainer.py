"""Batched explanation, pair selection and the result objects."""

from __future__ import annotations

import numpy as np
import torch
from conftest import images, make_osnet, make_tiny_clip
from PIL import Image

from reid_explain import explainify


def _count_forwards(model):
    sizes: list[int] = []
    handle = model.register_forward_hook(lambda m, a, out: sizes.append(int(a[0].shape[0])))
    return sizes, handle


def test_top_k_is_one_batched_forward_backward():
    model = make_osnet()
    q, g = images(1, (128, 64)), images(6, (128, 64), seed=1)
    with explainify(model) as exp:
        exp.adapter.grid_size((128, 64))  # warm the cached grid probes (the stages: Grad-CAM's
        exp.adapter.stage_before((128, 64))  # layer at an 8x4 last map)
        sizes, handle = _count_forwards(model)
        result = exp.explain(q, g, method="gradcam", top_k=3)
        handle.remove()
        scores = exp.similarity(q, g)[0]
    # one embedding pass per input set, then ONE pass for 3 pairs x 2 sides, in which each
    # image enters the host once (the query's 3 rows are repeated at the explained layer)
    assert sizes == [1, 6, 4]
    assert result.pairs[:, 1].tolist() == scores.topk(3).indices.tolist()
    assert torch.all(result.scores[:-1] >= result.scores[1:])


def test_internal_batch_size_splits_but_gives_the_same_maps():
    model = make_osnet()
    q, g = images(2, (128, 64)), images(3, (128, 64), seed=1)
    with explainify(model) as exp:
        whole = exp.explain(q, g, method="gradcam")
        sizes, handle = _count_forwards(model)
        split = exp.explain(q, g, method="gradcam", internal_batch_size=5)
        handle.remove()
    # every pair: the queries are embedded (2), then the gallery side's pass is the gallery's
    # embedding pass: 6 rows in chunks of 5 hold gallery 0, 1, 2 (3) and gallery 2 (1); then
    # the query side: rows 0-4 hold queries 0, 1 (2), row 5 query 1 (1)
    assert sizes == [2, 3, 1, 2, 1]
    torch.testing.assert_close(whole.query.maps, split.query.maps, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(whole.gallery.maps, split.gallery.maps, atol=1e-6, rtol=1e-5)


def test_default_internal_batch_holds_a_fixed_number_of_pixels():
    """Without ``internal_batch_size`` a pass holds DEFAULT_INTERNAL_BATCH_PIXELS: 8 images at
    256x128 (so the largest activation stays under glibc's 32 MB mmap threshold), 32 at
    128x64; embeddings are batched the same way."""
    from reid_explain.core.engine import DEFAULT_INTERNAL_BATCH_PIXELS, default_internal_batch_size

    assert default_internal_batch_size(torch.zeros(1, 3, 256, 128)) == 8
    assert default_internal_batch_size(torch.zeros(1, 3, 128, 64)) == 32
    assert default_internal_batch_size(torch.zeros(1, 3, 1024, 1024)) == 1
    assert DEFAULT_INTERNAL_BATCH_PIXELS // (224 * 224) == 5
    model = make_osnet()
    q, g = images(1, (256, 128)), images(20, (256, 128), seed=1)
    with explainify(model) as exp:
        exp.adapter.grid_size((256, 128))
        sizes, handle = _count_forwards(model)
        result = exp.explain(q, g, method="gradcam", top_k=12)
        handle.remove()
        reference = exp.explain(q, g, method="gradcam", top_k=12, internal_batch_size=64)
    # embeddings: the query (1), the gallery in 8s (8, 8, 4); then 24 rows (12 rows of the
    # one query image, 12 gallery images) in passes of 8 rows, each pass given its distinct
    # images: the query (1), the query and 4 gallery images (5), 8 gallery images (8)
    assert sizes == [1, 8, 8, 4, 1, 5, 8]
    torch.testing.assert_close(result.query.maps, reference.query.maps, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(result.gallery.maps, reference.gallery.maps, atol=1e-6,
                               rtol=1e-5)


def test_grounding_map_views_and_png(tmp_path):
    model = make_tiny_clip()
    with explainify(model) as exp:
        result = exp.explain(images(1), images(2, seed=1), method="gradcam")
    grounding = result.query
    assert grounding.on_grid().shape == (2, 8, 4)
    up = grounding.upsampled()
    assert up.shape == (2, 64, 32)
    assert isinstance(grounding.numpy(), np.ndarray) and grounding.numpy().shape == (2, 64, 32)
    # bilinear upsampling preserves the mean of each map up to border effects
    torch.testing.assert_close(up.mean(dim=(1, 2)), grounding.maps.mean(dim=(1, 2)),
                               atol=0.05 * float(grounding.maps.abs().max()), rtol=0)
    norm = grounding.normalized().maps
    assert float(norm.min()) == 0.0 and abs(float(norm.amax(dim=(1, 2)).min()) - 1) < 1e-6
    overlay = grounding.overlay(0)
    assert overlay.size == (32, 64)
    path = grounding.save_png(tmp_path / "maps.png")
    with Image.open(path) as png:
        assert png.size == (2 * 32 * 2, 64 * 2 + 14)
    paths = result.save_png(tmp_path / "pairs")
    assert len(paths) == 2 and all(p.exists() for p in paths)
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp leftovers
    sub = grounding[[1]]
    assert len(sub) == 1 and sub.labels == [grounding.labels[1]]
    torch.testing.assert_close(sub.maps[0], grounding.maps[1])


def test_masking_drop_is_consistent_with_direct_masking():
    model = make_tiny_clip()
    q, g = images(1), images(1, seed=1)
    with explainify(model) as exp:
        result = exp.explain(q, g, method="gradcam")
        values = exp.score(result, ["masking_drop"], masking_drop={"fraction": 0.25,
                                                                    "n_random": 2})
        grid = result.query.maps[0]
        top = grid.flatten().topk(8).indices  # 25% of 32 patches
        mask = torch.zeros(32, dtype=torch.bool)
        mask[top] = True
        pixels = mask.view(8, 4).repeat_interleave(8, 0).repeat_interleave(8, 1)
        masked = q.masked_fill(pixels, 0.0)
        expected = result.scores[0] - (exp.embed(masked) @ exp.embed(g).T)[0, 0]
    assert abs(float(values["masking_drop.query_top"][0]) - float(expected)) < 1e-5
    assert set(values) == {f"masking_drop.{s}_{k}" for s in ("query", "gallery")
                           for k in ("top", "random", "gap")}


def test_every_pair_in_one_pass_equals_embedding_first():
    """Explaining every pair lets the gallery side's Grad-CAM pass embed the gallery: the
    result (pairs, order, scores, maps) equals the embed-then-explain path of explicit pairs."""
    model = make_osnet()
    q, g = images(2, (128, 64)), images(4, (128, 64), seed=1)
    with explainify(model) as exp:
        exp.adapter.grid_size((128, 64))  # warm the cached grid probes (the stages: Grad-CAM's
        exp.adapter.stage_before((128, 64))  # layer at an 8x4 last map)
        sizes, handle = _count_forwards(model)
        one_pass = exp.explain(q, g, method="gradcam", top_k=4)
        handle.remove()
        explicit = exp.explain(q, g, method="gradcam", pairs=one_pass.pairs)
        scores = exp.similarity(q, g)
    assert sizes == [2, 4, 2]  # each image through the host once (and queries embedded first)
    assert one_pass.pairs[:4, 1].tolist() == scores[0].argsort(descending=True).tolist()
    torch.testing.assert_close(one_pass.scores, explicit.scores, atol=1e-5, rtol=1e-5)
    for side in ("query", "gallery"):
        torch.testing.assert_close(getattr(one_pass, side).maps, getattr(explicit, side).maps,
                                   atol=1e-5, rtol=1e-4)


def test_each_explained_image_is_stored_once():
    """1 query against 6 gallery images: the query side keeps one image (not 6 copies), the
    gallery side the caller's gallery tensor itself; rows still give each pair's image."""
    query, gallery = images(1, (128, 64)), images(6, (128, 64), seed=1)
    with explainify(make_osnet()) as exp:
        for pairs in (None, [(0, 4), (0, 1), (0, 4)]):
            result = exp.explain(query, gallery, method="gradcam", pairs=pairs)
            q, g = result.query, result.gallery
            assert len(q.images) == 1 and q.image_index.tolist() == [0] * len(result.pairs)
            torch.testing.assert_close(q.row_images(), query.expand(len(result.pairs), -1, -1, -1))
            torch.testing.assert_close(g.row_images(), gallery[result.pairs[:, 1]])
            sub = g[[len(g) - 1]]  # a selection keeps the store, selects the index
            torch.testing.assert_close(sub.row_images()[0], gallery[int(result.pairs[-1, 1])])
            assert sub.images is g.images
        assert g.images.untyped_storage().data_ptr() != gallery.untyped_storage().data_ptr()
        top = exp.explain(query, gallery, method="gradcam", top_k=6)
        every = top.gallery
        assert every.images.untyped_storage().data_ptr() == gallery.untyped_storage().data_ptr()
    # the overlay of a row shows that row's gallery image (rows are in score order)
    mean = torch.tensor(every.pixel_mean).view(3, 1, 1)
    std = torch.tensor(every.pixel_std).view(3, 1, 1)

    def shown_image(i: int) -> np.ndarray:
        return (gallery[i] * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()

    row = 2
    shown = np.asarray(every.overlay(row, alpha=0.0), dtype=np.float32) / 255
    own, other = int(top.pairs[row, 1]), int(top.pairs[row + 1, 1])
    assert np.abs(shown - shown_image(own)).max() <= 1 / 255
    assert np.abs(shown - shown_image(other)).max() > 0.05
