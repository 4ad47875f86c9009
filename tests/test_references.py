"""The image-blind reference and the verdicts: every figure of an evaluation beside the best map
drawn without looking at the image, learnt from images that are never scored."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import make_plain

import reid_explain
from reid_explain import explainify
from reid_explain.data.datasets import default_transform
from reid_explain.evaluation.grounding_scores import energy_pointing_game
from reid_explain.evaluation.protocol import ReidEvalSet, _training_reference
from reid_explain.evaluation.references import (
    ImageBlindReference,
    centred_prior,
    choose_reference,
    location_prior,
)
from reid_explain.evaluation.verdicts import compare, verdict_text
from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.attribution import Attribution
from reid_explain.synthpedes import SynthConfig, export_synthpedes
from reid_explain.synthpedes.side import load_synthpedes_side


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth") / "data"
    export_synthpedes(root, SynthConfig(n_ids=12, images_per_id=4, seed=5, height=64,
                                        width=32))
    return root


def _box_masks(n: int, boxes: list[tuple[int, int, int, int]], size=(16, 8)) -> torch.Tensor:
    masks = torch.zeros(n, 2, *size, dtype=torch.bool)
    for i in range(n):
        y0, y1, x0, x1 = boxes[i % len(boxes)]
        masks[i, 0, y0:y1, x0:x1] = True
    return masks


def test_location_prior_is_the_share_of_images_covering_each_pixel():
    masks = _box_masks(4, [(0, 8, 0, 4), (4, 12, 2, 6)])
    prior = location_prior(masks)
    assert prior[0, 0] == 0.5 and prior[5, 3] == 1.0 and prior[15, 7] == 0.0
    assert torch.equal(location_prior(masks, power=2), prior.pow(2))


def test_choose_reference_scores_candidates_on_the_other_half_only():
    """Identities 0, 2, ... build the prior and 1, 3, ... choose it. The selection half's people
    stand at a box the prior half never covers: a location prior would score 0 there, so a
    centred Gaussian wins, with its energy on the selection half recorded."""
    masks = torch.cat([_box_masks(6, [(0, 4, 0, 2)]), _box_masks(6, [(6, 10, 2, 6)])])
    groups = np.array([0, 2, 4, 0, 2, 4, 1, 3, 5, 1, 3, 5])
    ref = choose_reference(masks, groups)
    assert ref.info["kind"] == "centred" and ref.info["prior_images"] == 6
    assert ref.info["candidates"]["location prior"] == pytest.approx(0.0, abs=1e-6)
    person = masks[6:].any(dim=1)
    energy = energy_pointing_game(ref.prior.expand(6, 16, 8), person[:, None])[:, 0].mean()
    assert ref.info["selection_energy"] == pytest.approx(float(energy), abs=1e-6)
    # people in the same place on both halves: the sharpest location prior puts all its mass
    # on the person
    same = choose_reference(_box_masks(12, [(4, 12, 2, 6)]), groups)
    assert same.info["kind"] == "location" and same.info["selection_energy"] == 1.0
    with pytest.raises(reid_explain.errors.InputError, match="two"):
        choose_reference(masks, np.zeros(12))


def test_reference_comes_from_training_masks_never_the_scored_images(export):
    """Leakage guard: replace every query and gallery mask by a full-frame person; the reference
    of the export must not change, and it must count exactly the training images."""
    side = load_synthpedes_side(export)
    data = ReidEvalSet.from_synthpedes(export, default_transform(64, 32))
    assert data.reference is not None
    train = [p for p in side if "bounding_box_train" in p]
    assert data.reference.info["images"] == len(train) > 0
    poisoned = {path: (entry if "bounding_box_train" in path else
                       entry | {"masks": np.ones_like(entry["masks"])})
                for path, entry in side.items()}

    def resized(entry):
        m = torch.from_numpy(np.asarray(entry["masks"]))[None].float()
        return torch.nn.functional.interpolate(m, size=(64, 32), mode="nearest")[0] > 0.5

    again = _training_reference(export, poisoned, resized)
    assert again.name == data.reference.name
    assert torch.equal(again.prior, data.reference.prior)
    train_pids = {side[p]["pid"] for p in train}
    assert not train_pids & set(data.query_pids.tolist())


class _ReferenceAsMethod(Attribution):
    """A 'method' whose maps are the image-blind reference itself: it must not beat it."""

    name = "reference_copy"
    reference: ImageBlindReference | None = None

    def attribute(self, inputs, target, baselines=None, **options):
        return self.reference.maps(len(inputs), tuple(inputs.shape[-2:]))


class _Plugin:
    @hookimpl
    def register_attributions(self, register):
        register(_ReferenceAsMethod)


def test_verdict_is_no_when_the_maps_are_the_reference_maps(export):
    data = ReidEvalSet.from_synthpedes(export, default_transform(64, 32))
    _ReferenceAsMethod.reference = data.reference
    plugin = _Plugin()
    reid_explain.register(plugin, name="reference-copy-test")
    try:
        with explainify(make_plain(), layer="trunk") as exp:
            result = exp.evaluate(data, method="reference_copy", progress=False,
                                  metrics=["energy_pointing_game", "pointing_game",
                                           "counterfactual_masking"])
    finally:
        reid_explain.plugin_api.manager.unregister(name="reference-copy-test")
    comparison = result.comparison.set_index(["metric", "key"])
    assert len(comparison) >= 5  # energy, pointing, gap, top and bottom drops, ranks, ...
    for (metric, key), row in comparison.iterrows():
        assert row["reference_diff"] == 0.0, (metric, key)
        assert row["reference_beaten"] is False or row["reference_beaten"] == False  # noqa: E712
    # the same maps do beat random maps on person energy: the verdict can say yes
    assert comparison.loc[("energy_pointing_game", "person_energy"), "random_beaten"] == True  # noqa: E712
    assert result.info["reference"]["name"] == data.reference.name


def test_evaluate_scores_the_reference_like_a_method_and_writes_strict_json(export, tmp_path):
    data = ReidEvalSet.from_synthpedes(export, default_transform(64, 32))
    with explainify(make_plain(), layer="trunk") as exp:
        result = exp.evaluate(data, method="gradcam", progress=False, max_queries=8,
                              metrics=["energy_pointing_game", "counterfactual_masking",
                                       "deletion"],
                              metric_options={"deletion": {"side": "query"}})
    table = result.table
    ref = table[(table.method == "reference") & (table.key == "person_energy")]
    masks = data.query_masks[torch.as_tensor(ref["query"].tolist())].any(dim=1)
    expected = energy_pointing_game(data.reference.maps(len(masks), (64, 32)), masks[:, None])
    assert np.allclose(ref.value.to_numpy(), expected[:, 0].numpy(), atol=1e-6)
    keys = set(zip(result.comparison.metric, result.comparison.key, strict=True))
    assert ("deletion", "query_auc") in keys and ("counterfactual_masking", "gap") in keys
    assert ("counterfactual_masking", "random_drop") not in keys  # not a figure of the map
    assert not any("_curve_" in k for _, k in keys)
    deletion = result.comparison[result.comparison.metric == "deletion"].iloc[0]
    assert deletion.higher_is_better == False  # noqa: E712 - lower deletion AUC is better
    result.save(tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "summary.json").read_text(),
                       parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert saved["comparison"] and saved["info"]["reference"]["name"] == data.reference.name
    assert (tmp_path / "out" / "comparison.csv").is_file()


def test_without_masks_the_reference_is_a_centred_prior(export):
    data = ReidEvalSet.from_synthpedes(export, default_transform(64, 32))
    data.query_masks, data.reference = None, None
    with explainify(make_plain(), layer="trunk") as exp:
        result = exp.evaluate(data, method="gradcam", progress=False, max_queries=4,
                              metrics=["counterfactual_masking"])
    assert result.info["reference"]["kind"] == "centred"
    assert (result.table.method == "reference").any()
    prior = centred_prior((64, 32)).prior
    assert prior.argmax() == 31 * 32 + 15 or prior[31:33, 15:17].min() == prior.max()


def test_an_undefined_comparison_is_undetermined_never_a_pass():
    table = pd.DataFrame({"query": [0, 1, 0, 1], "method": ["m", "m", "reference", "reference"],
                          "metric": "x", "key": "y", "value": [math.nan, math.nan, 0.1, 0.2]})
    row = compare(table, "m", lambda metric, key: True).iloc[0]
    assert row["reference_beaten"] is None and verdict_text(row["reference_beaten"]) == \
        "undetermined"
    assert math.isnan(row["method"])
