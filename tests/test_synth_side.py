"""SynthPedes exports feed the real-format loaders, with masks and phrase spans attached."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reid_explain.data.datasets import TextImageDataset, collate_text_batch
from reid_explain.data.schema import PARTS
from reid_explain.data.synth import SynthConfig, export_synthpedes
from reid_explain.data.synth_side import load_synthpedes_side
from reid_explain.data.text_annotations import load_text_annotations
from reid_explain.errors import DataFormatError


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    root = tmp_path_factory.mktemp("sp") / "synthpedes_root"
    export_synthpedes(root, SynthConfig(n_ids=8, images_per_id=4, seed=3))
    return root


def test_text_image_dataset_carries_phrases_and_masks(export):
    annotations = load_text_annotations(export / "CUHK-PEDES")
    side = load_synthpedes_side(export)
    dataset = TextImageDataset(annotations, "train", side=side)
    assert len(dataset) > 0
    checked = 0
    for index in range(len(dataset)):
        item = dataset[index]
        assert "phrases" in item and item["masks"].shape[0] == len(PARTS)
        for phrase in item["phrases"]:
            assert item["caption"][phrase["start"]:phrase["end"]] == phrase["text"]
            assert item["masks"][PARTS.index(phrase["part"])].any()
            checked += 1
        assert not (item["masks"].sum(0) > 1).any()  # disjoint parts
    assert checked > len(dataset)
    batch = collate_text_batch([dataset[0], dataset[1]])
    assert batch["img"].shape[0] == 2 and len(batch["phrases"]) == 2


def test_side_file_errors_name_the_file(export, tmp_path):
    with pytest.raises(DataFormatError, match="annotations.json: SynthPedes side file not found"):
        load_synthpedes_side(tmp_path)
    broken = tmp_path / "broken"
    (broken / "synthpedes").mkdir(parents=True)
    np.savez(broken / "synthpedes" / "masks.npz", labels=np.zeros((1, 4, 4), np.uint8))
    data = json.loads((export / "synthpedes" / "annotations.json").read_text())
    data["images"][0].pop("captions")
    (broken / "synthpedes" / "annotations.json").write_text(json.dumps(data))
    with pytest.raises(DataFormatError, match=r"annotations.json: images\[0\] is malformed"):
        load_synthpedes_side(broken)
