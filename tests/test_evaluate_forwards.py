"""``evaluate`` runs the host as few times as the method and the metrics need (issue 17, 3).

Every host forward during an evaluation is recorded by a forward pre-hook (rows, with or
without gradients, and each row's exact pixels): every query and gallery image goes through the
host without gradients exactly once, the attribution's forwards are one row per explained image,
and the masked copies are the ones the metrics need, none twice. The values equal those of the
straightforward path: ``explain`` each batch, then each metric on a context without the reused
embeddings (every image and masked copy embedded again).
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import make_osnet

from reid_explain import explainify
from reid_explain.data.datasets import ImageReidDataset, default_transform
from reid_explain.evaluation.protocol import ReidEvalSet, random_maps, true_matches
from reid_explain.plugin_api import manager as plugin_manager
from reid_explain.plugin_api.metric import MetricContext
from reid_explain.synthpedes import SynthConfig, export_synthpedes

METRICS = ["counterfactual_masking", "deletion"]
N_RANDOM = 2
STEPS = (0.0, 0.5, 1.0)  # deletion: nothing, half, all cells removed
OPTIONS = {"counterfactual_masking": {"n_random": N_RANDOM}, "deletion": {"steps": STEPS}}
BATCH = 3


def _key(row: torch.Tensor) -> str:
    return hashlib.sha1(row.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


class ForwardLog:
    """Every host forward: grad mode and the pixels of each row."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.calls: list[tuple[bool, list[str]]] = []
        self.handle = model.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls.append((torch.is_grad_enabled(), [_key(r) for r in args[0]]))

    def rows(self, grad: bool) -> list[str]:
        return [k for g, keys in self.calls if g == grad for k in keys]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("fwd") / "sp"
    export_synthpedes(root, SynthConfig(n_ids=6, images_per_id=4, seed=2))
    return ReidEvalSet.from_synthpedes(root, default_transform(128, 64))


def test_dataset_batches_equal_its_items(synth):
    """Batched normalisation gives the items' values exactly (one conversion per batch)."""
    gallery: ImageReidDataset = synth.gallery
    idx = [len(gallery) - 1, 0, 2, 1]
    assert torch.equal(gallery.load_images(idx), torch.stack([gallery[i]["img"] for i in idx]))


class RecordingMean(plugin_manager.get("maskers", "mean").obj):
    """The mean-fill masker, noting which (image, removed cells) rows it was given."""

    def __init__(self, **options):
        super().__init__(**options)
        self.batch = 0
        self.rows: dict[tuple[int, str, bytes], str] = {}  # -> the masked image's pixels

    def __call__(self, images, grid_masks):
        out = super().__call__(images, grid_masks)
        for image, mask, masked in zip(images, grid_masks, out, strict=True):
            if mask.any():
                self.rows[(self.batch, _key(image), mask.cpu().numpy().tobytes())] = _key(masked)
        return out


def _reference(exp, data, n_queries, seed=0):
    """Per (query, method variant, metric, key) values the straightforward way, and the
    distinct (batch, image, removed cells) rows the metrics asked for."""
    g_all = data.gallery.load_images(range(len(data.gallery)))
    q_all = data.query.load_images(range(n_queries))
    gallery_emb = exp.embed(g_all)
    masker = RecordingMean()
    values = {}
    for start in range(0, n_queries, BATCH):
        masker.batch = start
        idx = np.arange(start, min(start + BATCH, n_queries))
        match = true_matches(exp.embed(q_all[idx]), gallery_emb, data.query_pids[idx],
                             data.query_camids[idx], data.gallery_pids, data.gallery_camids)
        keep = match >= 0
        idx, match = idx[keep], match[keep]
        if not len(idx):
            continue
        expl = exp.explain(q_all[idx], g_all[match], method="gradcam",
                           pairs=[(i, i) for i in range(len(idx))],
                           centre=gallery_emb.mean(dim=0))  # evaluate's default score
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
        for variant, e in (("gradcam", expl), ("random", random_maps(expl, generator))):
            context = MetricContext(
                explainer=exp, explanation=e, masker=masker, seed=seed + start,
                gallery_embeddings=gallery_emb, gallery_pids=torch.as_tensor(data.gallery_pids),
                gallery_camids=torch.as_tensor(data.gallery_camids),
                query_pids=torch.as_tensor(data.query_pids[idx]),
                query_camids=torch.as_tensor(data.query_camids[idx]),
                gallery_index=torch.as_tensor(match), query_masks=data.query_masks[idx],
                part_names=data.part_names)
            for name in METRICS:
                out = plugin_manager.get("metrics", name).obj(**OPTIONS[name]).compute(context)
                for key, v in out.items():
                    for q, x in zip(idx, torch.as_tensor(v).double().tolist(), strict=True):
                        values[(int(q), variant, name, key)] = x
    return values, masker.rows


def test_evaluate_embeds_every_image_once_and_matches_the_straightforward_path(synth):
    n_queries = len(synth.query_pids)
    with explainify(make_osnet()) as exp:
        exp.adapter.grid_size((128, 64))  # the adapter's one-off probes of the grid and of
        exp.adapter.stage_before((128, 64))  # Grad-CAM's stage (8x4 last map), not counted
        log = ForwardLog(exp.model)
        try:
            result = exp.evaluate(synth, method="gradcam", metrics=METRICS, batch_size=BATCH,
                                  metric_options=OPTIONS, progress=False, reference=None)
        finally:
            log.handle.remove()
        expected, needed = _reference(exp, synth, n_queries)

    explained = result.table.loc[result.table.method == "gradcam", "query"].nunique()
    assert explained == n_queries - result.info["skipped_no_valid_match"] > 0

    # unmasked images: each query and gallery image once, without gradients
    unmasked = {_key(x): ("query", i) for i, x in
                enumerate(synth.query.load_images(range(n_queries)))}
    unmasked.update({_key(x): ("gallery", i) for i, x in
                     enumerate(synth.gallery.load_images(range(len(synth.gallery))))})
    assert len(unmasked) == n_queries + len(synth.gallery)  # all images differ
    no_grad = log.rows(grad=False)
    seen = [unmasked[k] for k in no_grad if k in unmasked]
    assert sorted(seen) == sorted(unmasked.values())

    # the attribution: one row per explained image (query and match), with gradients
    assert len(log.rows(grad=True)) == 2 * explained

    # masked copies: exactly the distinct (image, removed cells) rows the metrics ask for in
    # each batch of queries, P = explained queries, at most:
    # counterfactual (query side): method maps top + N_RANDOM random + bottom cells; the
    #   random-map baseline only its own top and bottom (its random cells are the same sets)
    # deletion (both sides): step 0 removes nothing (known embedding); the method's maps need
    #   step 0.5 and 1.0, the baseline only step 0.5 (all cells removed is the same image)
    # (fewer where two sets coincide, e.g. top and bottom cells of a constant map)
    masked = [k for k in no_grad if k not in unmasked]
    assert len(masked) == len(needed)
    assert len(masked) <= ((1 + N_RANDOM + 1) + 2 + 2 * 2 + 2 * 1) * explained
    assert sorted(masked) == sorted(needed.values())
    # ... in one forward per metric and variant for each batch of queries (<= 64 rows each)
    batches = result.table.loc[result.table.method == "gradcam", "query"].floordiv(BATCH)
    masked_calls = [len(keys) for grad, keys in log.calls
                    if not grad and keys[0] not in unmasked]
    assert len(masked_calls) == len(METRICS) * 2 * batches.nunique()

    # identical results to the straightforward path (which embeds everything again)
    table = result.table
    assert len(table) == len(expected)
    got = {(int(r.query), r.method, r.metric, r.key): r.value for r in table.itertuples()}
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        np.testing.assert_allclose(got[key], value, atol=2e-6, rtol=0, equal_nan=True,
                                   err_msg=str(key))

    timing = result.info["timing"]
    assert timing["queries_computed"] == n_queries
    for stage in ("load_s", "embed_s", "explain_s", "metrics_s", "total_s"):
        assert timing[stage] > 0
    assert timing["total_s"] >= timing["embed_s"] + timing["explain_s"] + timing["metrics_s"]
    assert 0 < timing["queries_per_s"] < timing["forward_limit_queries_per_s"]
