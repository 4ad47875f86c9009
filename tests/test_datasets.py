"""torch Datasets over a Market-style folder and text-image annotations written by the test."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
import torchreid
from PIL import Image
from torch.utils.data import DataLoader

from reid_explain.data.attributes import load_attribute_mat
from reid_explain.data.datasets import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageReidDataset,
    TextImageDataset,
    collate_text_batch,
    default_transform,
    parse_market_name,
    scan_market_folder,
)
from reid_explain.data.schema import MARKET1501
from reid_explain.data.text_annotations import load_text_annotations
from reid_explain.errors import DataFormatError

TRAIN = ["0002_c1s1_000151_00.jpg", "0002_c2s1_000301_01.jpg", "0002_c3s2_000451_00.jpg",
         "0007_c1s1_000011_00.jpg", "0007_c4s1_000021_02.jpg",
         "0010_c2s1_000100_00.jpg", "0010_c5s1_000200_00.jpg", "0010_c6s1_000300_00.jpg"]
QUERY = ["0004_c1s1_000500_00.jpg", "0005_c2s1_000600_00.jpg"]
GALLERY = ["0004_c3s1_000700_00.jpg", "0005_c4s1_000800_00.jpg", "0000_c1s1_000900_00.jpg",
           "-1_c2s1_001000_00.jpg", "0009_c6s1_001100_00.jpg"]


def _jpeg(path: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (16, 8, 3), dtype=np.uint8)).save(path, quality=90)


@pytest.fixture
def market(tmp_path: Path) -> Path:
    root = tmp_path / "Market"
    for folder, names in (("bounding_box_train", TRAIN), ("query", QUERY),
                          ("bounding_box_test", GALLERY)):
        (root / folder).mkdir(parents=True)
        for i, name in enumerate(names):
            _jpeg(root / folder / name, i)
    (root / "bounding_box_train" / "Thumbs.db").write_bytes(b"ignored: not a jpg")
    return root


@pytest.fixture
def attributes(tmp_path: Path):
    def split(ids: list[str], seed: int) -> dict:
        rng = np.random.default_rng(seed)
        out = {f: rng.integers(1, 3, (1, len(ids))).astype(np.uint8) for f in MARKET1501.fields}
        out["age"] = np.arange(1, len(ids) + 1, dtype=np.uint8)[None] % 4 + 1
        for f in MARKET1501["upper_color"].fields:  # exactly one colour each: white, blue
            out[f][:] = 2 if f == "upwhite" else 1
        for f in MARKET1501["lower_color"].fields:
            out[f][:] = 2 if f == "downblue" else 1
        cell = np.empty((1, len(ids)), dtype=object)
        cell[0, :] = ids
        out["image_index"] = cell
        return out
    path = tmp_path / "market_attribute.mat"
    scipy.io.savemat(path, {"market_attribute": {"train": split(["0002", "0007", "0010"], 0),
                                                 "test": split(["0004", "0005"], 1)}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no invalid codes here
        return load_attribute_mat(path)


def test_names_parse_like_torchreid(market):
    assert parse_market_name("0001_c1s1_000151_00.jpg") == (1, 0)
    assert parse_market_name(Path("x_c9/-1_c6s1_000001_00.jpg")) == (-1, 5)
    gallery = scan_market_folder(market / "bounding_box_test")
    assert sorted(pid for _, pid, _ in gallery) == [0, 4, 5, 9]  # junk skipped, distractor kept
    with pytest.raises(DataFormatError, match=r"bad\.jpg: file name does not match"):
        parse_market_name("bad.jpg")


def test_same_lists_as_torchreid_process_dir(market):
    process_dir = torchreid.data.datasets.image.market1501.Market1501.process_dir
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        ours = scan_market_folder(market / folder)
        assert sorted(ours) == sorted(process_dir(None, str(market / folder)))
    # torchreid relabels in set-iteration order, we in sorted order: equal up to a bijection
    ours = sorted(scan_market_folder(market / "bounding_box_train", relabel=True))
    theirs = sorted(process_dir(None, str(market / "bounding_box_train"), relabel=True))
    assert [pid for _, pid, _ in ours] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert len({(a[1], b[1]) for a, b in zip(ours, theirs, strict=True)}) == 3


def test_image_dataset_items_and_attributes(market, attributes):
    train = ImageReidDataset(market, "train", attributes=attributes)
    assert len(train) == 8 and train.num_pids == 3 and train.num_cams == 6
    assert [pid for _, pid, _, _ in train.data] == [0, 0, 0, 1, 1, 2, 2, 2]
    assert train.data[0] == (str(market / "bounding_box_train" / TRAIN[0]), 0, 0, 0)
    item = train[3]
    assert item["img"].shape == (3, 256, 128) and item["img"].dtype == torch.float32
    assert (item["pid"], item["camid"], item["original_pid"]) == (1, 0, 7)
    assert train.attribute_names == MARKET1501.names
    a = MARKET1501.names.index("upper_color")
    assert item["attributes"][a] == MARKET1501["upper_color"].states.index("white")
    age = MARKET1501.names.index("age")
    assert [int(train[i]["attributes"][age]) for i in (0, 3, 5)] == [1, 2, 3]

    gallery = ImageReidDataset(market, "gallery", attributes=attributes)
    pids = [pid for _, pid, _, _ in gallery.data]
    assert sorted(pids) == [0, 4, 5, 9]  # original ids, as torchreid's query/gallery
    codes = {gallery.original_pids[i]: gallery[i]["attributes"] for i in range(len(gallery))}
    assert codes[0].tolist() == [-1] * len(MARKET1501)  # distractor: unlabelled
    assert codes[9].tolist() == [-1] * len(MARKET1501)
    assert (codes[4] >= 0).all()

    plain = ImageReidDataset(market, "query")
    assert plain[0]["attributes"].shape == (0,)


def test_default_transform_is_resize_totensor_imagenet(market):
    image = Image.open(market / "query" / QUERY[0]).convert("RGB")
    out = default_transform()(image)
    raw = torch.from_numpy(np.array(image.resize((128, 256), Image.BILINEAR))).float() / 255
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    expected = (raw.permute(2, 0, 1) - mean) / std
    assert out.shape == (3, 256, 128)
    assert torch.allclose(out, expected, atol=0.05)


def test_dataloader_and_torchreid_sampler(market, attributes):
    small = default_transform(32, 16)
    train = ImageReidDataset(market, "train", attributes=attributes, transform=small)
    batch = next(iter(DataLoader(train, batch_size=4, shuffle=False)))
    assert batch["img"].shape == (4, 3, 32, 16)
    assert batch["pid"].tolist() == [0, 0, 0, 1]
    assert batch["attributes"].shape == (4, len(MARKET1501))
    sampler = torchreid.data.sampler.RandomIdentitySampler(train.data, batch_size=4,
                                                           num_instances=2)
    loader = DataLoader(train, batch_size=4, sampler=sampler, drop_last=True)
    batches = list(loader)
    assert batches
    for b in batches:
        pids = b["pid"].tolist()
        assert len(set(pids)) == 2 and all(pids.count(p) == 2 for p in set(pids))
    built = torchreid.data.sampler.build_train_sampler(train.data, "RandomIdentitySampler",
                                                       batch_size=4, num_instances=2)
    assert len(list(iter(built))) > 0


def test_torchreid_layout_and_bad_roots(market, tmp_path):
    nested = tmp_path / "data" / "market1501"
    nested.mkdir(parents=True)
    market.rename(nested / "Market-1501-v15.09.15")
    assert len(ImageReidDataset(tmp_path / "data", "query")) == 2
    with pytest.raises(DataFormatError, match="no Market-1501 folders"):
        ImageReidDataset(tmp_path / "elsewhere", "train")


# --------------------------------------------------------------------------- text-image

@pytest.fixture
def pedes(tmp_path: Path) -> Path:
    base = tmp_path / "CUHK-PEDES"
    records = [
        {"split": "train", "id": 1, "file_path": "a/1.jpg",
         "captions": ["A man in a red shirt.", "Red shirt and jeans."]},
        {"split": "train", "id": 2, "file_path": "a/2.jpg", "captions": ["A woman, black bag."]},
        {"split": "train", "id": 1, "file_path": "b/3.jpg", "captions": ["The man again."]},
        {"split": "train", "id": 3, "file_path": "b/4.jpg", "captions": ["Someone in green."]},
        {"split": "test", "id": 9, "file_path": "t/5.jpg", "captions": ["Tall person."]},
    ]
    for i, rec in enumerate(records):
        (base / "imgs" / rec["file_path"]).parent.mkdir(parents=True, exist_ok=True)
        _jpeg(base / "imgs" / rec["file_path"], 100 + i)
    (base / "reid_raw.json").write_text(json.dumps(records))
    return tmp_path


def test_text_image_dataset_with_side_mapping(pedes):
    data = load_text_annotations(pedes)
    mask = np.zeros((16, 8), bool)
    mask[4:9] = True
    side = {"a/1.jpg": {"phrases": [[{"text": "a red shirt", "start": 9, "end": 20,
                                      "part": "upper_body"}],
                                    [{"text": "Red shirt", "start": 0, "end": 9,
                                      "part": "upper_body"}]],
                        "masks": {"upper_body": mask}}}
    ds = TextImageDataset(data, "train", transform=default_transform(32, 16), side=side)
    assert len(ds) == 5 and ds.num_pids == 3
    first, second, third = ds[0], ds[1], ds[2]
    assert first["caption"] == "A man in a red shirt." and first["pid"] == 0
    span = first["phrases"][0]
    assert first["caption"][span["start"]:span["end"]] == span["text"]
    assert second["phrases"][0]["text"] == "Red shirt" and second["caption_index"] == 1
    assert first["masks"]["upper_body"] is mask
    assert "phrases" not in third and third["pid"] == 1 and third["image_id"] == 1
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_text_batch)))
    assert batch["img"].shape == (3, 3, 32, 16)
    assert batch["pid"].tolist() == [0, 0, 1]
    assert batch["caption"][2] == "A woman, black bag."
    assert batch["phrases"][2] is None and len(batch["phrases"][0]) == 1
    plain = next(iter(DataLoader(TextImageDataset(data, "test", transform=default_transform(
        32, 16)), batch_size=1)))
    assert plain["caption"] == ["Tall person."]
    sampler = torchreid.data.sampler.RandomIdentitySampler(ds.data, batch_size=4, num_instances=2)
    assert {ds.data[i][1] for i in sampler} <= {0, 1, 2}


def test_side_mapping_phrase_count_must_match(pedes):
    data = load_text_annotations(pedes)
    side = {str(data.train.records[0].image_path): {"phrases": [[]]}}
    with pytest.raises(DataFormatError, match=r"a/1\.jpg: field 'phrases' has 1 entries for 2"):
        TextImageDataset(data, "train", side=side)


def test_unreadable_image_names_file(pedes):
    data = load_text_annotations(pedes)
    data.train.records[1].image_path.write_bytes(b"not a jpeg")
    ds = TextImageDataset(data, "train")
    with pytest.raises(DataFormatError, match=r"2\.jpg: not a readable image"):
        ds[2]


@pytest.mark.parametrize("name, message", [
    ("0001_c0s1_000151_00.jpg", r"camera 0; Market-1501 cameras are numbered from 1"),
    ("-0005_c1s1_000151_00.jpg", r"identity -5 is neither -1 \(junk\) nor in 0\.\.1000000"),
    ("99999999999_c1s1_0.jpg", r"identity 99999999999 is neither"),
    ("1-2_c1s1_0.jpg", r"identity '1-2' is not an integer"),
])
def test_market_names_with_impossible_ids_or_cameras_are_refused(name, message):
    from reid_explain.data.datasets import parse_market_name

    with pytest.raises(DataFormatError, match=message):
        parse_market_name(f"/data/bounding_box_test/{name}")
    assert parse_market_name("/x/-1_c3s1_0.jpg") == (-1, 2)  # junk stays junk
