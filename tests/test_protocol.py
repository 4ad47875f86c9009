"""The evaluation protocol: true matches, batched scoring, tidy tables, random baselines."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import images, make_osnet, make_plain

import reid_explain
from reid_explain import Metric, PluginError, explainify, hookimpl
from reid_explain.data.datasets import default_transform
from reid_explain.errors import InputError
from reid_explain.evaluation.protocol import ReidEvalSet, true_matches
from reid_explain.synthpedes import SynthConfig, export_synthpedes

XDIST_COST_S = 21  # seconds on 2 cores: pytest-xdist starts the longest files first


def test_true_matches_follow_the_market_protocol():
    q = torch.eye(3)[:2]                       # two queries
    g = torch.tensor([[1.0, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0, 0.8, 0.2]])
    g = torch.nn.functional.normalize(g, dim=1)
    match = true_matches(q, g, np.array([1, 2]), np.array([0, 0]),
                         np.array([1, 1, 2, 3]), np.array([0, 1, 0, 1]))
    # query 0: gallery 0 is the same pid from the same camera -> excluded; gallery 1 is next
    # query 1: its only same-pid gallery item shares its camera -> no valid match
    assert match.tolist() == [1, -1]


class CountingMetric(Metric):
    """Per query: the map maximum, so rows can be checked against the explanation."""

    name = "test_map_max"
    higher_is_better = None

    def compute(self, context):
        assert context.gallery_embeddings is not None and context.query_pids is not None
        return {"max": context.explanation.query.on_grid().flatten(1).amax(1)}


class FailingMetric(Metric):
    name = "test_failing"

    def compute(self, context):
        raise ValueError("cannot score")


class MetricsPlugin:
    @hookimpl
    def register_metrics(self, register):
        register(CountingMetric)
        register(FailingMetric)


@pytest.fixture(scope="module")
def metrics_plugin():
    plugin = MetricsPlugin()
    reid_explain.register(plugin, name="test-protocol-metrics")
    yield plugin
    reid_explain.unregister(plugin)


def _tensor_set(seed=0):
    pids = np.array([1, 1, 2, 3])
    return ReidEvalSet(query=images(4, (128, 64), seed=seed), query_pids=pids,
                       query_camids=np.array([0, 1, 0, 0]),
                       gallery=images(6, (128, 64), seed=seed + 1),
                       gallery_pids=np.array([1, 1, 2, 2, 3, 4]),
                       gallery_camids=np.array([1, 2, 1, 0, 0, 1]))


def test_evaluate_rows_summary_baseline_and_skips(metrics_plugin, tmp_path):
    data = _tensor_set()
    with explainify(make_osnet()) as exp:
        result = exp.evaluate(data, method="gradcam", metrics=["test_map_max"], batch_size=3,
                              progress=False)
        # query 3 (pid 3, camera 0) only has a same-camera gallery item: skipped
        assert result.info["skipped_no_valid_match"] == 1
        table = result.table
        assert sorted(table["query"].unique()) == [0, 1, 2]
        assert set(table["method"]) == {"gradcam", "random", "reference"}
        matches = data.gallery[table[table.method == "gradcam"].sort_values("query")["match"]
                               .to_numpy().copy()]
        # the default score is centred on the whole gallery's mean embedding
        centre = exp.embed(data.gallery).mean(dim=0)
        direct = exp.explain(data.query[:3], matches, pairs=[(0, 0), (1, 1), (2, 2)],
                             method="gradcam", centre=centre)
        cosine = exp.evaluate(data, method="gradcam", metrics=["test_map_max"], batch_size=3,
                              progress=False, score="cosine", reference=None)
        plain = exp.explain(data.query[:3], matches, pairs=[(0, 0), (1, 1), (2, 2)],
                            method="gradcam")
    expected = direct.query.on_grid().flatten(1).amax(1).numpy()  # what the metric reads
    got = table[table.method == "gradcam"].sort_values("query")["value"].to_numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    got_cosine = cosine.table[cosine.table.method == "gradcam"].sort_values("query")["value"]
    np.testing.assert_allclose(got_cosine.to_numpy(), plain.query.on_grid().flatten(1).amax(1),
                               rtol=1e-5, atol=1e-7)
    assert result.info["score"] == "centred" and cosine.info["score"] == "cosine"
    assert not np.allclose(got, got_cosine.to_numpy(), rtol=1e-3)  # the centre changes maps
    summary = result.summary.set_index(["method", "key"])["value"]
    # evaluate reuses the embeddings of its one gallery pass (explain re-embeds the matches in
    # another batch: float rounding), so the maps agree to the tolerance above
    assert summary[("gradcam", "max")] == pytest.approx(got.mean(), rel=1e-12)
    assert summary[("gradcam", "max")] == pytest.approx(expected.mean(), abs=1e-7)
    saved = result.save(tmp_path / "eval")
    info = json.loads((saved / "summary.json").read_text())["info"]
    assert info["queries"] == 4 and (saved / "per_query.csv").exists()


def test_random_maps_do_not_depend_on_the_method():
    """The report scores random maps once, with its first method, and shares those rows with
    every other method: they must not depend on the method (drawn on the host's patch grid,
    the same pairs, the same per-batch generator), whatever grid the method's own maps have."""
    data = _tensor_set()
    rows = {}
    with explainify(make_osnet()) as exp:
        for method in ("gradcam", "integrated_gradients"):  # a 4x2 grid and pixels
            result = exp.evaluate(data, method=method, metrics=["counterfactual_masking"],
                                  batch_size=2, progress=False, reference=None,
                                  method_options={"n_steps": 4} if method ==
                                  "integrated_gradients" else None)
            table = result.table
            rows[method] = table[table.method == "random"].drop(columns="method") \
                .sort_values(["query", "key"]).reset_index(drop=True)
            own = table[table.method == method]
            assert not own["value"].equals(rows[method]["value"])
    assert rows["gradcam"]["query"].nunique() == 3 and rows["gradcam"]["value"].notna().all()
    pd.testing.assert_frame_equal(rows["integrated_gradients"], rows["gradcam"])


def test_metric_errors_name_the_plugin(metrics_plugin):
    with explainify(make_osnet()) as exp, pytest.raises(PluginError,
                                                        match="'test_failing'.*cannot score"):
        exp.evaluate(_tensor_set(), metrics=["test_failing"], progress=False)


def test_bad_eval_sets_are_named():
    with pytest.raises(InputError, match="query has 4 images, 3 pids"):
        ReidEvalSet(query=images(4), query_pids=[1, 2, 3], query_camids=[0, 0, 0, 0],
                    gallery=images(2), gallery_pids=[1, 2], gallery_camids=[1, 1])
    with explainify(make_plain(), layer="trunk") as exp, pytest.raises(
            reid_explain.UnknownPluginError, match="masker 'nope'"):
        exp.evaluate(_tensor_set(), metrics=["masking_drop"], masker="nope")


def test_synthpedes_export_brings_query_masks(tmp_path, metrics_plugin):
    root = tmp_path / "sp"
    export_synthpedes(root, SynthConfig(n_ids=8, images_per_id=4, seed=5))
    data = ReidEvalSet.from_synthpedes(root, default_transform(128, 64))
    assert data.query_masks is not None and data.query_masks.shape[1:] == (9, 128, 64)
    assert data.part_names[3] == "upper_body"
    assert data.query_masks[:, 3].flatten(1).any(1).all()  # every query shows an upper body
    with explainify(make_osnet()) as exp:
        result = exp.evaluate(root, metrics=["test_map_max"], progress=False,
                              transform=default_transform(128, 64), max_queries=4)
    # the method, random maps and the image-blind reference learnt from the training masks
    assert result.info["queries"] == 4 and len(result.table) == 3 * 4
    train = root / "market1501" / "Market-1501-v15.09.15" / "bounding_box_train"
    assert result.info["reference"]["images"] == len(list(train.glob("*.jpg")))


def test_evaluate_takes_a_pair_of_datasets(tmp_path, metrics_plugin):
    from reid_explain.data import ImageReidDataset

    root = tmp_path / "sp"
    export_synthpedes(root, SynthConfig(n_ids=6, images_per_id=4, seed=2))
    transform = default_transform(128, 64)
    query = ImageReidDataset(root, "query", transform=transform)
    gallery = ImageReidDataset(root, "gallery", transform=transform)
    with explainify(make_osnet()) as exp:
        result = exp.evaluate((query, gallery), metrics=["test_map_max"], progress=False,
                              max_queries=3, random_baseline=False, reference=None)
    assert result.info["queries"] == 3 and len(result.table) == 3
    assert result.table["pid"].tolist() == [query.data[i][1] for i in range(3)]


class _Flaky:
    """A third-party metric plugin that raises on its third batch while armed: a run that
    dies part-way, as a kill or a failing plugin would leave it."""

    armed = False
    calls = 0

    @staticmethod
    def metric():
        from reid_explain.plugin_api.metric import Metric

        class FlakyMetric(Metric):
            name = "flaky_metric"

            def compute(self, context):
                _Flaky.calls += 1
                if _Flaky.armed and _Flaky.calls == 4:
                    raise RuntimeError("the machine went away")
                return {"mass": context.explanation.query.on_grid().flatten(1).sum(1)}

        return FlakyMetric


@pytest.mark.slow
def test_evaluate_resumes_after_a_failure_with_identical_results(tmp_path, capsys):
    import reid_explain
    from reid_explain.cli import main
    from reid_explain.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def register_metrics(self, register):
            register(_Flaky.metric())

    plugin = Plugin()
    reid_explain.register(plugin, name="test-flaky")
    try:
        assert main(["synth", "--out", str(tmp_path / "data"), "--ids", "12", "--seed", "2",
                     "--format", "market,masks"]) == 0
        args = ["evaluate", "--data", str(tmp_path / "data"), "--model",
                "zoo:osnet-synthpedes", "--height", "128", "--width", "64", "--metrics",
                "counterfactual_masking", "flaky_metric", "--batch-size", "3",
                "--max-queries", "12", "--no-progress"]
        assert main([*args, "--out", str(tmp_path / "clean")]) == 0
        _Flaky.armed, _Flaky.calls = True, 0
        assert main([*args, "--out", str(tmp_path / "run")]) == 2
        assert "the machine went away" in capsys.readouterr().err
        partial = tmp_path / "run.partial"
        assert not (tmp_path / "run").exists()
        # 3 variants per batch (method, random maps, reference): batch 0 completed
        assert len(list(partial.glob("batch_*.json"))) == 1
        _Flaky.armed, _Flaky.calls = False, 0
        assert main([*args, "--out", str(tmp_path / "run"), "--resume"]) == 0
        assert _Flaky.calls == 3 * 3  # batch 0 reused: only batches 1..3 computed
        for name in ("per_query.csv", "summary.csv"):
            assert (tmp_path / "run" / name).read_bytes() == \
                (tmp_path / "clean" / name).read_bytes()
        assert not partial.exists()
        # a resume of a different run is refused, not mixed in
        _Flaky.armed, _Flaky.calls = True, 0
        assert main([*args, "--out", str(tmp_path / "other")]) == 2
        other = [*args[:-3], "--max-queries", "9", "--no-progress"]
        assert main([*other, "--out", str(tmp_path / "other"), "--resume"]) == 2
        assert "holds batches of a different evaluation" in capsys.readouterr().err
    finally:
        reid_explain.unregister(plugin)
        _Flaky.armed = False


@pytest.mark.slow
def test_evaluate_killed_mid_run_resumes_to_the_uninterrupted_result(tmp_path):
    """SIGKILL a real ``reid-explain evaluate`` once it has completed some batches, resume it,
    and compare with an uninterrupted run byte for byte."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from reid_explain.cli import main

    assert main(["synth", "--out", str(tmp_path / "data"), "--ids", "16", "--seed", "4",
                 "--format", "market,masks"]) == 0
    args = ["evaluate", "--data", str(tmp_path / "data"), "--model", "zoo:osnet-synthpedes",
            "--height", "128", "--width", "64", "--method", "integrated_gradients",
            "--metrics", "counterfactual_masking", "deletion", "--batch-size", "1",
            "--max-queries", "8", "--no-progress"]
    partial = tmp_path / "run.partial"
    child = subprocess.Popen([sys.executable, "-m", "reid_explain", *args, "--out",
                              str(tmp_path / "run")], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while len(list(partial.glob("batch_*.json"))) < 3 and child.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.kill(child.pid, signal.SIGKILL)
    assert child.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    done = len(list(partial.glob("batch_*.json")))
    assert 3 <= done < 8 and not (tmp_path / "run").exists()
    assert main([*args, "--out", str(tmp_path / "run"), "--resume"]) == 0
    assert main([*args, "--out", str(tmp_path / "clean")]) == 0
    for name in ("per_query.csv", "summary.csv"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "clean" / name).read_bytes()
