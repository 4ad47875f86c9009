"""Text-to-image ReID annotations (CUHK-PEDES, ICFG-PEDES, RSTPReid) as typed records.

The three data sets ship one JSON list of records each, with small differences that the reference
code (IRRA) hard-codes per data set; here one loader handles all three:

* CUHK-PEDES ``<root>/CUHK-PEDES/reid_raw.json``: ``split`` (train/val/test), ``captions``,
  ``file_path``, ``id`` (1-based), ``processed_tokens``.
* ICFG-PEDES ``<root>/ICFG-PEDES/ICFG-PEDES.json`` (some copies: ``ICFG_PEDES.json``): same keys,
  no val split.
* RSTPReid ``<root>/RSTPReid/data_captions.json``: ``img_path`` instead of ``file_path``.

Images resolve as IRRA does: ``<root>/<dataset>/imgs/<file_path>``. Identity ids are remapped to
``0..N-1`` per split (sorted original id order; for the training splits this equals IRRA's pids),
the original id is kept in ``original_id``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reid_explain.errors import DataFormatError

#: Data set directory name -> (annotation file names in preference order, image path key).
DATASETS: dict[str, tuple[tuple[str, ...], str]] = {
    "CUHK-PEDES": (("reid_raw.json",), "file_path"),
    "ICFG-PEDES": (("ICFG-PEDES.json", "ICFG_PEDES.json"), "file_path"),
    "RSTPReid": (("data_captions.json",), "img_path"),
}
IMAGE_DIR = "imgs"
_PATH_KEYS = ("file_path", "img_path")
#: the splits these formats define; anything else is a typo that would silently drop records
SPLITS = ("train", "val", "test")
#: identity ids beyond this are not ids (the formats' ids are small positive integers)
MAX_ID = 10**9
_MAX_LISTED = 5


@dataclass(frozen=True)
class TextImageRecord:
    """One annotated image: its captions, identity and where the image lies."""

    pid: int
    """Identity remapped to 0..N-1 within the split."""
    original_id: int
    """Identity as written in the JSON ``id`` field."""
    image_path: Path
    """Resolved path ``<dataset dir>/imgs/<file_path>``."""
    file_path: str
    """The path as written in the JSON (relative to ``imgs/``)."""
    captions: tuple[str, ...]
    split: str
    image_id: int
    """Index of the image within its split, in file order (IRRA's ``image_id``)."""
    record_index: int
    """Position of the record in the annotation file, for error messages and side files."""


@dataclass
class TextImageSplit:
    """The records of one split, with the two views IRRA builds from them."""

    name: str
    records: list[TextImageRecord] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_pids(self) -> int:
        return len({r.pid for r in self.records})

    def caption_items(self) -> list[tuple[int, int, Path, str]]:
        """Training view: one ``(pid, image_id, image_path, caption)`` per caption."""
        return [(r.pid, r.image_id, r.image_path, c) for r in self.records for c in r.captions]

    def retrieval_lists(self) -> dict[str, list[Any]]:
        """Evaluation view: images and captions as parallel lists with their (remapped) pids."""
        return {
            "image_pids": [r.pid for r in self.records],
            "img_paths": [r.image_path for r in self.records],
            "caption_pids": [r.pid for r in self.records for _ in r.captions],
            "captions": [c for r in self.records for c in r.captions],
        }


@dataclass
class TextImageAnnotations:
    """A loaded annotation file: its splits, data set name and where images live."""

    dataset: str
    annotation_file: Path
    image_dir: Path
    splits: dict[str, TextImageSplit]

    def __getitem__(self, split: str) -> TextImageSplit:
        return self.splits.get(split, TextImageSplit(split))

    @property
    def train(self) -> TextImageSplit:
        return self["train"]

    @property
    def val(self) -> TextImageSplit:
        """Empty for ICFG-PEDES, which has no val split."""
        return self["val"]

    @property
    def test(self) -> TextImageSplit:
        return self["test"]


def resolve_annotation_file(path: str | os.PathLike,
                            dataset: str | None = None) -> tuple[str, Path, Path]:
    """``(dataset, annotation file, image dir)`` from a root, a data set dir or the JSON itself.

    ``dataset`` (``"CUHK-PEDES"``, ``"ICFG-PEDES"``, ``"RSTPReid"``) is needed only when neither
    the file name nor the directory tells it.
    """
    path = Path(path)
    if dataset is not None:
        dataset = _dataset_name(dataset, path)
    candidates = [dataset] if dataset else list(DATASETS)
    if path.is_file():
        name = dataset or next((d for d in DATASETS if path.name in DATASETS[d][0]), None)
        if name is None:
            raise DataFormatError(f"{path}: cannot tell the data set from the file name; pass "
                                  f"dataset= one of {list(DATASETS)}")
        return name, path, path.parent / IMAGE_DIR
    if path.is_dir():
        looked: list[Path] = []
        for base, names in ((path, candidates), *((path / d, [d]) for d in candidates)):
            for name in names:
                for file_name in DATASETS[name][0]:
                    anno = base / file_name
                    looked.append(anno)
                    if anno.is_file():
                        return name, anno, base / IMAGE_DIR
        shown = ", ".join(str(p) for p in looked[:8])
        raise DataFormatError(f"{path}: no annotation file found; looked for {shown}")
    raise DataFormatError(f"{path}: annotation file or directory not found")


def _dataset_name(dataset: str, path: Path) -> str:
    key = dataset.lower().replace("-", "").replace("_", "")
    for name in DATASETS:
        if name.lower().replace("-", "") == key:
            return name
    raise DataFormatError(f"{path}: unknown data set {dataset!r}; known: {list(DATASETS)}")


def read_json_records(path: Path) -> list[dict[str, Any]]:
    """The JSON list of records, with UTF-8 and JSON errors reported by file and position."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataFormatError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DataFormatError(f"{path}: not UTF-8 text: byte {exc.start} (line {line}) is "
                              f"{raw[exc.start:exc.start + 1]!r}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataFormatError(f"{path}: invalid JSON at line {exc.lineno} column {exc.colno}: "
                              f"{exc.msg}") from None
    if not isinstance(data, list):
        raise DataFormatError(f"{path}: top level must be a list of records, got "
                              f"{type(data).__name__}")
    return data


def _check_record(record: Any, i: int, path: Path, path_key: str) -> tuple[str, int, str,
                                                                           tuple[str, ...]]:
    """``(split, id, file_path, captions)`` of record ``i`` or a DataFormatError naming it."""
    where = f"{path}: record {i}"
    if not isinstance(record, dict):
        raise DataFormatError(f"{where}: not an object ({type(record).__name__})")
    keys = [path_key, *(k for k in _PATH_KEYS if k != path_key)]
    file_key = next((k for k in keys if k in record), None)
    if file_key is None:
        raise DataFormatError(f"{where}: missing field {path_key!r}")
    for key in ("id", "split", "captions"):
        if key not in record:
            raise DataFormatError(f"{where}: missing field {key!r}")
    file_path = record[file_key]
    if not isinstance(file_path, str) or not file_path:
        raise DataFormatError(f"{where}: field {file_key!r} must be a non-empty string")
    if Path(file_path).is_absolute() or ".." in Path(file_path).parts:
        raise DataFormatError(f"{where}: field {file_key!r} ({file_path!r}) must be a path "
                              "inside the image folder (relative, without '..')")
    try:
        pid = int(record["id"])
    except (TypeError, ValueError, OverflowError):
        raise DataFormatError(f"{where}: field 'id' is not an integer ({record['id']!r})") \
            from None
    if isinstance(record["id"], bool) or (isinstance(record["id"], float)
                                          and record["id"] != pid):
        raise DataFormatError(f"{where}: field 'id' is not an integer ({record['id']!r})")
    if not 0 <= pid <= MAX_ID:
        raise DataFormatError(f"{where}: field 'id' is {pid}, outside 0..{MAX_ID}")
    split = record["split"]
    if split not in SPLITS:
        raise DataFormatError(f"{where}: field 'split' is {split!r}; known splits: "
                              f"{list(SPLITS)}")
    captions = record["captions"]
    if isinstance(captions, str) or not isinstance(captions, list):
        raise DataFormatError(f"{where} ({file_path}): field 'captions' must be a list of strings")
    if not captions:
        raise DataFormatError(f"{where} ({file_path}): field 'captions' is an empty list")
    for j, caption in enumerate(captions):
        if not isinstance(caption, str) or not caption.strip():
            raise DataFormatError(f"{where} ({file_path}): field 'captions'[{j}] is not a "
                                  "non-empty string")
    return split, pid, file_path, tuple(captions)


def load_text_annotations(path: str | os.PathLike, dataset: str | None = None, *,
                          image_dir: str | os.PathLike | None = None,
                          check_images: bool = True) -> TextImageAnnotations:
    """Load CUHK-PEDES / ICFG-PEDES / RSTPReid annotations into typed records per split.

    ``path``: the data root (holding ``CUHK-PEDES/`` ...), the data set dir, or the JSON file.
    ``image_dir`` overrides ``<dataset dir>/imgs``. With ``check_images`` every image must exist;
    the error lists the first few that do not, so a wrong root is caught before training.
    """
    name, anno, default_images = resolve_annotation_file(path, dataset)
    images = Path(image_dir) if image_dir is not None else default_images
    path_key = DATASETS[name][1]
    raw = read_json_records(anno)
    checked = [_check_record(r, i, anno, path_key) for i, r in enumerate(raw)]
    first: dict[tuple[str, str], int] = {}
    for i, (split, _, file_path, _) in enumerate(checked):
        j = first.setdefault((split, file_path), i)
        if j != i:
            raise DataFormatError(f"{anno}: records {j} and {i} both describe {file_path!r} "
                                  f"in split {split!r}; merge their captions into one record")

    if check_images:
        missing = [(i, fp) for i, (_, _, fp, _) in enumerate(checked)
                   if not (images / fp).is_file()]
        if missing:
            shown = "; ".join(f"record {i}: {images / fp}" for i, fp in missing[:_MAX_LISTED])
            more = f" (and {len(missing) - _MAX_LISTED} more)" if len(missing) > _MAX_LISTED else ""
            raise DataFormatError(f"{anno}: {len(missing)} image(s) named in field "
                                  f"{path_key!r} do not exist: {shown}{more}")

    ids_per_split: dict[str, set[int]] = {}
    for split, pid, _, _ in checked:
        ids_per_split.setdefault(split, set()).add(pid)
    remap = {s: {orig: new for new, orig in enumerate(sorted(ids))}
             for s, ids in ids_per_split.items()}
    splits: dict[str, TextImageSplit] = {s: TextImageSplit(s) for s in ids_per_split}
    for i, (split, pid, file_path, captions) in enumerate(checked):
        records = splits[split].records
        records.append(TextImageRecord(
            pid=remap[split][pid], original_id=pid, image_path=images / file_path,
            file_path=file_path, captions=captions, split=split, image_id=len(records),
            record_index=i))
    return TextImageAnnotations(name, anno, images, splits)
