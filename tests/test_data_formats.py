"""Real-format loaders: tiny files written in each official layout, with the known quirks."""

from __future__ import annotations

import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.io

from reid_explain.data.attributes import (
    TIDY_COLUMNS,
    attribute_codes,
    attributes_from_mat_dict,
    load_attribute_mat,
    load_attribute_table,
    load_attributes,
    save_attribute_mat,
    save_attribute_table,
    wide_attributes,
)
from reid_explain.data.schema import DUKEMTMC, MARKET1501, Attribute, AttributeKind, AttributeSchema
from reid_explain.data.text_annotations import load_text_annotations, resolve_annotation_file
from reid_explain.errors import DataFormatError

# --------------------------------------------------------------------------- .mat fixtures


def _cell(ids: list[str]) -> np.ndarray:
    cell = np.empty((1, len(ids)), dtype=object)
    cell[0, :] = ids
    return cell


def _split_struct(codes: dict[str, list[int]], ids: list[str], order: list[str]) -> dict:
    """One split in the official layout: uint8 (1, N) per field plus the image_index cell."""
    out: dict[str, np.ndarray] = {}
    for name in order:
        out[name] = _cell(ids) if name == "image_index" else \
            np.asarray([codes[name]], dtype=np.uint8)
    return out


def _market_codes(n: int, seed: int) -> dict[str, list[int]]:
    rng = np.random.default_rng(seed)
    codes = {f: rng.integers(1, 3, n).tolist() for f in MARKET1501.fields}
    codes["age"] = rng.integers(1, 5, n).tolist()
    return codes


MARKET_TRAIN_IDS = ["0002", "0007", "0010", "0011"]
MARKET_TEST_IDS = ["0001", "0003", "0004"]


def _market_train_codes() -> dict[str, list[int]]:
    codes = _market_codes(4, 0)
    up = [f"up{c}" for c in ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")]
    for f in up:  # colours not one-hot: id 0002 black+red, 0007 none, 0010 blue only, 0011 green
        codes[f] = [1, 1, 1, 1]
    codes["upblack"][0] = codes["upred"][0] = 2
    codes["upblue"][2] = 2
    codes["upgreen"][3] = 2
    codes["hat"][1] = 0  # invalid codes
    codes["upred"][3] = 0
    codes["age"] = [1, 2, 3, 4]
    return codes


def write_market_mat(path: Path) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
    train, test = _market_train_codes(), _market_codes(3, 1)
    order = [*MARKET1501.fields, "image_index"]
    scipy.io.savemat(path, {"market_attribute": {
        "train": _split_struct(train, MARKET_TRAIN_IDS, order),
        "test": _split_struct(test, MARKET_TEST_IDS, list(reversed(order))),  # order differs
    }})
    return train, test


def _expected_rows(split: str, ids: list[str], codes: dict[str, list[int]],
                   schema: AttributeSchema) -> list[tuple]:
    """The documented policy, spelled out independently of the loader."""
    rows = []
    for i, pid in enumerate(ids):
        for attr in schema:
            if attr.one_field_per_class:
                for field, state in zip(attr.fields, attr.states, strict=True):
                    if codes[field][i] == 2:
                        rows.append((split, int(pid), attr.name, state))
                if any(codes[f][i] not in (1, 2) for f in attr.fields):
                    rows.append((split, int(pid), attr.name, None))
            else:
                code = codes[attr.fields[0]][i]
                value = attr.states[code - 1] if 1 <= code <= len(attr.states) else None
                rows.append((split, int(pid), attr.name, value))
    return rows


def _rows(table: pd.DataFrame) -> list[tuple]:
    return [(s, int(p), a, None if pd.isna(v) else v)
            for s, p, a, v in table[list(TIDY_COLUMNS)].itertuples(index=False)]


@pytest.fixture
def market_mat(tmp_path: Path) -> tuple[Path, dict, dict]:
    path = tmp_path / "market_attribute.mat"
    train, test = write_market_mat(path)
    return path, train, test


def test_market_mat_round_trips_exactly(market_mat):
    path, train, test = market_mat
    with pytest.warns(UserWarning, match=r"train: hat=1, upred=1"):
        table = load_attribute_mat(path)
    assert list(table.columns) == list(TIDY_COLUMNS)
    assert table.attrs["schema"] == "market1501"
    assert table.attrs["invalid_codes"] == {"train": {"hat": 1, "upred": 1}}
    expected = (_expected_rows("train", MARKET_TRAIN_IDS, train, MARKET1501)
                + _expected_rows("test", MARKET_TEST_IDS, test, MARKET1501))
    assert _rows(table) == expected


def test_market_quirks_spelled_out(market_mat):
    path, _, _ = market_mat
    with pytest.warns(UserWarning):
        table = load_attribute_mat(path, "market1501")
    up = table[(table.split == "train") & (table.attribute == "upper_color")]
    assert _rows(up) == [("train", 2, "upper_color", "black"), ("train", 2, "upper_color", "red"),
                         ("train", 10, "upper_color", "blue"),
                         ("train", 11, "upper_color", "green"),  # id 7: no colour, no row
                         ("train", 11, "upper_color", None)]  # id 11: upred invalid
    age = table[(table.split == "train") & (table.attribute == "age")]
    assert list(age.value) == ["young", "teenager", "adult", "old"]
    hat = table[(table.split == "train") & (table.attribute == "hat") & (table.pid == 7)]
    assert hat.value.isna().all() and len(hat) == 1


def test_codes_and_wide_views(market_mat):
    path, train, _ = market_mat
    with pytest.warns(UserWarning):
        table = load_attribute_mat(path)
    codes = attribute_codes(table)
    assert codes.keys[:4] == [("train", 2), ("train", 7), ("train", 10), ("train", 11)]
    a_up, a_age, a_hat = (codes.attributes.index(n) for n in ("upper_color", "age", "hat"))
    assert codes.codes[:4, a_up].tolist() == [-1, -1, 6, -1]  # multi-hot, none, blue, invalid
    assert codes.codes[:4, a_age].tolist() == [0, 1, 2, 3]
    assert codes.codes[codes.row("train", 7), a_hat] == -1
    assert codes.codes[codes.row("train", 2), a_hat] == train["hat"][0] - 1
    black = codes.states.index(("upper_color", "black"))
    red = codes.states.index(("upper_color", "red"))
    assert codes.multi_hot[0, black] == codes.multi_hot[0, red] == 1
    hat_cols = [j for j, (a, _) in enumerate(codes.states) if a == "hat"]
    assert codes.multi_hot[1, hat_cols].tolist() == [-1, -1]
    assert (codes.multi_hot[3, black:black + 8] == -1).all()
    wide = wide_attributes(table)
    assert wide.loc[("train", 2), "upper_color"] == "black|red"
    assert wide.loc[("train", 7), "upper_color"] == "none"  # no colour set: its own state
    assert wide_attributes(table, no_class=None).loc[("train", 7), "upper_color"] is None
    assert wide.loc[("train", 7), "hat"] is None
    assert wide.loc[("train", 11), "upper_color"] is None
    assert wide.shape == (7, len(MARKET1501))


@pytest.mark.parametrize("options", [
    {}, {"squeeze_me": True}, {"struct_as_record": False},
    {"squeeze_me": True, "struct_as_record": False}, {"simplify_cells": True}])
def test_every_loadmat_variant_decodes_the_same(market_mat, options):
    path, _, _ = market_mat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = load_attribute_mat(path)
        table = attributes_from_mat_dict(scipy.io.loadmat(path, **options), source=path)
    assert _rows(table) == _rows(reference)


def test_duke_invalid_top_code_and_single_identity(tmp_path):
    path = tmp_path / "duke_attribute.mat"
    ids = ["0005", "0009"]
    codes = {f: [1, 2] for f in DUKEMTMC.fields}
    codes["top"] = [0, 2]  # the real file has code 0 in `top`
    test_codes = {f: [2] for f in DUKEMTMC.fields}
    order = ["image_index", *DUKEMTMC.fields]
    scipy.io.savemat(path, {"duke_attribute": {
        "train": _split_struct(codes, ids, order),
        "test": _split_struct(test_codes, ["0042"], order[::-1]),  # 1 id: squeezes to scalars
    }})
    with pytest.warns(UserWarning, match=r"top=1"):
        table = load_attribute_mat(path)
    assert table.attrs["schema"] == "dukemtmc"
    assert _rows(table) == (_expected_rows("train", ids, codes, DUKEMTMC)
                            + _expected_rows("test", ["0042"], test_codes, DUKEMTMC))
    top = table[(table.attribute == "top") & (table.split == "train")]
    assert top.value.isna().tolist() == [True, False]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        squeezed = attributes_from_mat_dict(scipy.io.loadmat(path, squeeze_me=True), source=path)
    assert _rows(squeezed) == _rows(table)


def test_save_mat_and_tables_round_trip(market_mat, tmp_path):
    path, _, _ = market_mat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = load_attribute_mat(path)
        save_attribute_mat(table, tmp_path / "again.mat")
        again = load_attribute_mat(tmp_path / "again.mat")
    assert _rows(again) == _rows(table)
    for name in ("t.csv", "t.tsv"):
        save_attribute_table(table, tmp_path / name)
        loaded = load_attributes(tmp_path / name, "market1501")
        assert _rows(loaded) == _rows(table)
        assert loaded["pid"].dtype == np.int64
    assert not list(tmp_path.glob(".*"))  # atomic writes leave no temporary


def test_parquet_round_trip_or_clear_install_hint(market_mat, tmp_path):
    path, _, _ = market_mat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = load_attribute_mat(path)
    target = tmp_path / "t.parquet"
    if not any(importlib.util.find_spec(m) for m in ("pyarrow", "fastparquet")):
        with pytest.raises(ImportError, match="pyarrow"):
            save_attribute_table(table, target)
        target.write_bytes(b"PAR1")
        with pytest.raises(ImportError, match=r"t\.parquet.*pip install pyarrow"):
            load_attribute_table(target)
        return
    save_attribute_table(table, target)
    assert _rows(load_attribute_table(target, "market1501")) == _rows(table)


def test_user_schema_with_own_top_variable(tmp_path):
    schema = AttributeSchema("mine", (
        Attribute("hat", AttributeKind.PRESENCE, ("no", "yes"), ("hat",), "hat"),
        Attribute("shade", AttributeKind.MULTICLASS, ("dark", "mid", "light"), ("shade",)),
    ))
    path = tmp_path / "mine.mat"
    scipy.io.savemat(path, {"my_attrs": {"train": _split_struct(
        {"hat": [2, 1], "shade": [3, 1]}, ["0001", "0002"], ["shade", "image_index", "hat"])}})
    table = load_attribute_mat(path, schema)
    assert _rows(table) == [("train", 1, "hat", "yes"), ("train", 1, "shade", "light"),
                            ("train", 2, "hat", "no"), ("train", 2, "shade", "dark")]


def test_char_matrix_ids_and_double_codes(tmp_path):
    """Files re-saved by other tools: ids as a char matrix, codes as doubles (NaN = invalid)."""
    path = tmp_path / "market_attribute.mat"
    codes = {f: np.array([[1.0, 2.0]]) for f in MARKET1501.fields}
    codes["age"] = np.array([[4.0, np.nan]])
    scipy.io.savemat(path, {"market_attribute": {"train": {**codes, "image_index": ["0003",
                                                                                    "0008"]}}})
    with pytest.warns(UserWarning, match=r"train: age=1"):
        table = load_attribute_mat(path)
    age = table[table.attribute == "age"]
    assert age.pid.tolist() == [3, 8] and age.value.tolist()[0] == "old"
    assert pd.isna(age.value.tolist()[1])


# --------------------------------------------------------------------------- .mat bad input

def _market_with(tmp_path: Path, mutate) -> Path:
    train = _market_codes(3, 2)
    order = [*MARKET1501.fields, "image_index"]
    struct = {"market_attribute": {"train": _split_struct(train, ["0001", "0002", "0003"], order),
                                   "test": _split_struct(train, ["0004", "0005", "0006"], order)}}
    mutate(struct)
    path = tmp_path / "market_attribute.mat"
    scipy.io.savemat(path, struct)
    return path


def test_mat_missing_file(tmp_path):
    with pytest.raises(DataFormatError, match=r"nope\.mat: attribute file not found"):
        load_attribute_mat(tmp_path / "nope.mat")


def test_mat_wrong_top_variable(tmp_path):
    path = _market_with(tmp_path, lambda s: s.update(other=s.pop("market_attribute")))
    with pytest.raises(DataFormatError,
                       match=r"market_attribute\.mat: .*top-level variable.*other"):
        load_attribute_mat(path)
    with pytest.raises(DataFormatError, match=r"market_attribute\.mat: expected top-level "
                                              r"variable 'market_attribute'"):
        load_attribute_mat(path, "market1501")
    with pytest.raises(DataFormatError, match=r"expected top-level variable 'duke_attribute'"):
        load_attribute_mat(_market_with(tmp_path, lambda s: None), "dukemtmc")


def test_mat_missing_attribute_field(tmp_path):
    path = _market_with(tmp_path, lambda s: s["market_attribute"]["test"].pop("upgreen"))
    with pytest.raises(DataFormatError,
                       match=r"market_attribute\.mat: split 'test': missing attribute field\(s\) "
                             r"\['upgreen'\]"):
        load_attribute_mat(path)


def test_mat_wrong_array_length(tmp_path):
    def shorten(s):
        s["market_attribute"]["train"]["age"] = np.array([[1, 2]], np.uint8)
    with pytest.raises(DataFormatError, match=r"split 'train': field 'age' has 2 values but "
                                              r"'image_index' has 3 ids"):
        load_attribute_mat(_market_with(tmp_path, shorten))


def test_mat_not_a_mat_file(tmp_path):
    path = tmp_path / "market_attribute.mat"
    path.write_bytes(b"\xff\xfe garbage")
    with pytest.raises(DataFormatError, match=r"market_attribute\.mat: not a readable \.mat"):
        load_attribute_mat(path)


def test_table_bad_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("split,pid,attribute,value\ntrain,1,hat,yes\ntrain,2,hat,maybe\n")
    with pytest.raises(DataFormatError, match=r"t\.csv: row 1: value 'maybe' of attribute 'hat'"):
        load_attribute_table(path, "market1501")
    path.write_text("split,pid,attribute,value\n,1,hat,yes\n")
    with pytest.raises(DataFormatError, match=r"t\.csv: row 0: field 'split' is empty"):
        load_attribute_table(path)
    path.write_text("split,pid,attr,value\n")
    with pytest.raises(DataFormatError, match=r"t\.csv: missing column\(s\) \['attribute'\]"):
        load_attribute_table(path)
    path.write_text("split,pid,attribute,value\ntrain,x1,hat,yes\n")
    with pytest.raises(DataFormatError, match=r"t\.csv: row 0: field 'pid'"):
        load_attribute_table(path)
    path.write_bytes(b"split,pid,attribute,value\ntrain,1,hat,\xe9\n")
    with pytest.raises(DataFormatError, match=r"t\.csv: not UTF-8"):
        load_attribute_table(path)


# --------------------------------------------------------------------------- text annotations

CUHK_RECORDS = [
    {"split": "train", "captions": ["A man in a red shirt.", "Red shirt, black pants."],
     "file_path": "CUHK01/0363004.png", "id": 1, "processed_tokens": [["a", "man"]]},
    {"split": "train", "captions": ["A woman with a backpack."],
     "file_path": "CUHK01/0001001.png", "id": 2, "processed_tokens": [["a"]]},
    {"split": "val", "captions": ["Blue jeans."], "file_path": "train_query/p1_s1.jpg",
     "id": 7, "processed_tokens": []},
    {"split": "test", "captions": ["Café visitor in white.", "Wears a hat."],
     "file_path": "test_query/p9_s2.jpg", "id": 12, "processed_tokens": []},
    {"split": "test", "captions": ["A child."], "file_path": "test_query/p3_s1.jpg", "id": 11,
     "processed_tokens": []},
    {"split": "train", "captions": ["Same man, back view."],
     "file_path": "CUHK01/0363005.png", "id": 1, "processed_tokens": []},
]


def _write_dataset(root: Path, dataset: str, file_name: str, records: list[dict]) -> Path:
    base = root / dataset
    key = "img_path" if dataset == "RSTPReid" else "file_path"
    for rec in records:
        image = base / "imgs" / rec[key]
        image.parent.mkdir(parents=True, exist_ok=True)
        image.write_bytes(b"not read at load time")
    anno = base / file_name
    anno.write_text(json.dumps(records, ensure_ascii=False), encoding="utf-8")
    return anno


def test_cuhk_pedes_records_and_irra_views(tmp_path):
    anno = _write_dataset(tmp_path, "CUHK-PEDES", "reid_raw.json", CUHK_RECORDS)
    for where in (tmp_path, tmp_path / "CUHK-PEDES", anno):
        data = load_text_annotations(where)
        assert data.dataset == "CUHK-PEDES" and data.annotation_file == anno
    assert set(data.splits) == {"train", "val", "test"}
    train = data.train
    assert [r.original_id for r in train.records] == [1, 2, 1]
    assert [r.pid for r in train.records] == [0, 1, 0]  # = IRRA's id - 1
    assert [r.image_id for r in train.records] == [0, 1, 2]
    assert train.records[0].image_path == tmp_path / "CUHK-PEDES/imgs/CUHK01/0363004.png"
    assert train.records[0].captions == ("A man in a red shirt.", "Red shirt, black pants.")
    assert train.caption_items() == [
        (0, 0, train.records[0].image_path, "A man in a red shirt."),
        (0, 0, train.records[0].image_path, "Red shirt, black pants."),
        (1, 1, train.records[1].image_path, "A woman with a backpack."),
        (0, 2, train.records[2].image_path, "Same man, back view.")]
    test = data.test.retrieval_lists()
    assert test["image_pids"] == [1, 0]  # ids 12, 11 remapped in sorted order
    assert [r.original_id for r in data.test.records] == [12, 11]
    assert test["captions"] == ["Café visitor in white.", "Wears a hat.", "A child."]
    assert test["caption_pids"] == [1, 1, 0]
    assert data.val.records[0].record_index == 2 and data.val.num_pids == 1


@pytest.mark.parametrize("file_name", ["ICFG-PEDES.json", "ICFG_PEDES.json"])
def test_icfg_pedes_both_file_names_no_val(tmp_path, file_name):
    records = [{**r, "id": r["id"] - 1} for r in CUHK_RECORDS if r["split"] != "val"]
    _write_dataset(tmp_path, "ICFG-PEDES", file_name, records)
    data = load_text_annotations(tmp_path, "ICFG-PEDES")
    assert data.dataset == "ICFG-PEDES" and data.annotation_file.name == file_name
    assert len(data.val) == 0 and set(data.splits) == {"train", "test"}
    assert [r.pid for r in data.train.records] == [r.original_id for r in data.train.records]


def test_rstpreid_img_path(tmp_path):
    records = [{"id": r["id"], "img_path": r["file_path"], "captions": r["captions"],
                "split": r["split"]} for r in CUHK_RECORDS]
    anno = _write_dataset(tmp_path, "RSTPReid", "data_captions.json", records)
    data = load_text_annotations(tmp_path / "RSTPReid")
    assert data.dataset == "RSTPReid"
    assert [r.file_path for r in data.train.records] == [r["img_path"] for r in records
                                                         if r["split"] == "train"]
    assert data.image_dir == anno.parent / "imgs"
    assert resolve_annotation_file(anno) == ("RSTPReid", anno, anno.parent / "imgs")


# --------------------------------------------------------------------------- text bad input

def _bad(tmp_path: Path, records: list, **kwargs) -> str:
    _write_dataset(tmp_path, "CUHK-PEDES", "reid_raw.json", [r for r in records
                                                             if isinstance(r, dict)
                                                             and "file_path" in r])
    (tmp_path / "CUHK-PEDES/reid_raw.json").write_text(json.dumps(records))
    with pytest.raises(DataFormatError) as info:
        load_text_annotations(tmp_path, **kwargs)
    assert "reid_raw.json" in str(info.value)
    return str(info.value)


def test_text_missing_file(tmp_path):
    with pytest.raises(DataFormatError, match=r"no annotation file found; looked for .*reid_raw"):
        load_text_annotations(tmp_path)
    with pytest.raises(DataFormatError, match=r"gone\.json: annotation file or directory not"):
        load_text_annotations(tmp_path / "gone.json")


def test_text_missing_images_listed(tmp_path):
    anno = _write_dataset(tmp_path, "CUHK-PEDES", "reid_raw.json", CUHK_RECORDS)
    for rec in CUHK_RECORDS[:3]:
        (anno.parent / "imgs" / rec["file_path"]).unlink()
    with pytest.raises(DataFormatError, match=r"reid_raw\.json: 3 image\(s\) named in field "
                                              r"'file_path' do not exist: record 0: .*0363004"):
        load_text_annotations(anno)
    assert len(load_text_annotations(anno, check_images=False).train) == 3


def test_text_empty_captions(tmp_path):
    records = [dict(r) for r in CUHK_RECORDS]
    records[4]["captions"] = []
    msg = _bad(tmp_path, records)
    assert "record 4 (test_query/p3_s1.jpg): field 'captions' is an empty list" in msg


def test_text_missing_field_and_bad_id(tmp_path):
    records = [dict(r) for r in CUHK_RECORDS]
    del records[1]["split"]
    assert "record 1: missing field 'split'" in _bad(tmp_path, records)
    records = [dict(r) for r in CUHK_RECORDS]
    records[2]["id"] = "seven"
    assert "record 2: field 'id' is not an integer" in _bad(tmp_path, records)
    records = [dict(r) for r in CUHK_RECORDS]
    del records[3]["file_path"]
    (tmp_path / "CUHK-PEDES/reid_raw.json").write_text(json.dumps(records))
    with pytest.raises(DataFormatError, match=r"record 3: missing field 'file_path'"):
        load_text_annotations(tmp_path)


def test_text_non_utf8_and_bad_json(tmp_path):
    anno = _write_dataset(tmp_path, "CUHK-PEDES", "reid_raw.json", CUHK_RECORDS)
    anno.write_bytes(json.dumps(CUHK_RECORDS).replace("Caf\\u00e9", "CAFE").encode("utf-8")
                     .replace(b"CAFE", b"Caf\xe9"))
    with pytest.raises(DataFormatError, match=r"reid_raw\.json: not UTF-8 text: byte \d+ "
                                              r"\(line 1\)"):
        load_text_annotations(tmp_path)
    anno.write_text('[{"split": "train",\n  "captions": [}]')
    with pytest.raises(DataFormatError, match=r"reid_raw\.json: invalid JSON at line 2"):
        load_text_annotations(tmp_path)
    anno.write_text('{"split": "train"}')
    with pytest.raises(DataFormatError, match=r"top level must be a list"):
        load_text_annotations(tmp_path)


def _with_first(change: dict) -> list[dict]:
    return [dict(CUHK_RECORDS[0], **change), *CUHK_RECORDS[1:]]


@pytest.mark.parametrize("records, message", [
    (_with_first({"id": float("inf")}), r"record 0: field 'id' is not an integer \(inf\)"),
    (_with_first({"id": -3}), r"record 0: field 'id' is -3, outside 0\.\.1000000000"),
    (_with_first({"id": 10**20}), r"record 0: field 'id' is 100000000000000000000, outside"),
    (_with_first({"split": "tset"}), r"record 0: field 'split' is 'tset'; known splits"),
    (_with_first({"file_path": "/etc/passwd"}), r"record 0: field 'file_path' \('/etc/passwd'"
                                                r"\) must be a path inside the image folder"),
    (_with_first({"file_path": "../../secret.png"}), r"must be a path inside the image folder"),
    ([*CUHK_RECORDS, dict(CUHK_RECORDS[0])], r"records 0 and 6 both describe "
                                             r"'CUHK01/0363004\.png' in split 'train'"),
], ids=["infinite id", "negative id", "huge id", "unknown split", "absolute path",
        "parent path", "duplicate record"])
def test_text_annotation_ids_splits_paths_and_duplicates_are_checked(tmp_path, records,
                                                                     message):
    path = tmp_path / "CUHK-PEDES" / "reid_raw.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(records))  # Infinity is what json writes for inf
    with pytest.raises(DataFormatError, match=message):
        load_text_annotations(path, check_images=False)


@pytest.mark.parametrize("ids, message", [
    (["0001", "12345678901234567890", "0004"], r"split 'test': field 'image_index' holds id "
                                               r"12345678901234567890, outside 0\.\.1000000"),
    (["0001", "0003", "0001"], r"split 'test': field 'image_index' lists id 1 twice"),
], ids=["20-digit id", "duplicate id"])
def test_mat_ids_out_of_range_or_twice_are_named(tmp_path, ids, message):
    order = [*MARKET1501.fields, "image_index"]
    path = tmp_path / "market_attribute.mat"
    scipy.io.savemat(path, {"market_attribute": {
        "train": _split_struct(_market_train_codes(), MARKET_TRAIN_IDS, order),
        "test": _split_struct(_market_codes(3, 1), ids, order)}})
    with pytest.raises(DataFormatError, match=message):
        load_attribute_mat(path)


def test_a_reader_that_crashes_takes_down_only_its_own_process(tmp_path):
    """scipy's C reader can die with SIGSEGV on a corrupt .mat; the loader reads in a child
    process, so a crash is an error naming the file (a real segfault here)."""
    from reid_explain.data.isolated import read_isolated

    path = tmp_path / "corrupt.mat"
    path.write_bytes(b"MATLAB 5.0" + bytes(200))
    with pytest.raises(DataFormatError, match=r"corrupt\.mat: the \.mat file reader crashed on "
                                              r"this file \(SIGSEGV\)"):
        read_isolated("import ctypes; ctypes.string_at(0)", path, ".mat file")
    with pytest.raises(DataFormatError, match=r"corrupt\.mat: not a readable \.mat file"):
        load_attribute_mat(path)  # the real reader on the same bytes: an error, no crash
