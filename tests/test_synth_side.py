"""SynthPedes exports feed the real-format loaders, with masks and phrase spans attached."""

from __future__ import annotations

import json

import numpy as np
import pytest

from reid_explain.data.datasets import TextImageDataset, collate_text_batch
from reid_explain.data.schema import PARTS
from reid_explain.data.text_annotations import load_text_annotations
from reid_explain.errors import DataFormatError
from reid_explain.synthpedes import SynthConfig, export_synthpedes
from reid_explain.synthpedes.side import load_synthpedes_side


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
    with pytest.raises(DataFormatError,
                       match=r"annotations.json: images\[0\]: missing field 'captions'"):
        load_synthpedes_side(broken)


def _first(data):
    return data["images"][0]


def _twice(data):
    data["images"].append(dict(data["images"][0]))


#: (what to corrupt in annotations.json, or in the labels array, and the error it must give)
CORRUPTIONS = [
    ("images missing", lambda d: d.pop("images"), None, r"field 'images' must be a list"),
    ("top level a list", lambda d: d["images"], None, r"expected a JSON object"),
    ("negative mask index", lambda d: _first(d).update(mask_index=-1), None,
     r"images\[0\]\.mask_index: -1 is not a non-negative integer below"),
    ("huge mask index", lambda d: _first(d).update(mask_index=10 ** 20), None,
     r"mask_index: 100000000000000000000 is not"),
    ("string mask index", lambda d: _first(d).update(mask_index=" "), None,
     r"mask_index: expected a non-negative integer, got ' '"),
    ("negative pid", lambda d: _first(d).update(pid=-5), None, r"images\[0\]\.pid: -5"),
    ("path outside the root", lambda d: _first(d).update(market_path="../../etc/passwd"),
     None, r"market_path: '\.\./\.\./etc/passwd' leaves the data set root"),
    ("absolute path", lambda d: _first(d).update(market_path="/etc/passwd"), None,
     r"leaves the data set root"),
    ("duplicate image", _twice, None, r"images\[\d+\]: image .* is listed twice"),
    ("captions not a list", lambda d: _first(d).update(captions="x"), None,
     r"images\[0\]\.captions: expected a list"),
    ("label out of range", None, lambda labels: labels.__setitem__((0, 0, 0), 99),
     r"masks.npz: 'labels' values must be 0\.\.9"),
]


@pytest.mark.parametrize("what, annotate, relabel, message", CORRUPTIONS,
                         ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_side_files_give_an_error_naming_file_and_field(export, tmp_path, what,
                                                                annotate, relabel, message):
    root = tmp_path / "copy"
    (root / "synthpedes").mkdir(parents=True)
    data = json.loads((export / "synthpedes" / "annotations.json").read_text())
    with np.load(export / "synthpedes" / "masks.npz") as npz:
        labels = npz["labels"].copy()
    if annotate is not None:
        result = annotate(data)
        if what == "top level a list":
            data = result
    if relabel is not None:
        relabel(labels)
    (root / "synthpedes" / "annotations.json").write_text(json.dumps(data))
    np.savez_compressed(root / "synthpedes" / "masks.npz", labels=labels)
    with pytest.raises(DataFormatError, match=message):
        load_synthpedes_side(root)


def test_a_truncated_masks_archive_is_a_format_error(export, tmp_path):
    root = tmp_path / "copy"
    (root / "synthpedes").mkdir(parents=True)
    (root / "synthpedes" / "annotations.json").write_text(
        (export / "synthpedes" / "annotations.json").read_text())
    raw = (export / "synthpedes" / "masks.npz").read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 30):
        (root / "synthpedes" / "masks.npz").write_bytes(raw[:cut])
        with pytest.raises(DataFormatError, match="masks.npz: not a readable .npz archive"):
            load_synthpedes_side(root)
