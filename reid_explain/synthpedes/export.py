"""Write a SynthPedes data set to disk in the *real* formats, so real loaders run on it.

Layout under ``root`` (every file byte-identical for the same config):

* ``market1501/Market-1501-v15.09.15/{bounding_box_train,bounding_box_test,query}/*.jpg``:
  Market-1501 names ``0001_c1s1_000025_00.jpg``; pid 0000 = distractor (torchreid's own
  ``Market1501(root=root)`` loads it).
* ``market1501/market_attribute.mat``: official layout (per identity, codes 1/2, ``age`` 1..4).
* ``CUHK-PEDES/reid_raw.json`` and ``CUHK-PEDES/imgs/synthpedes/*.jpg``.
* ``synthpedes/annotations.json`` (config, planted structure, identities, per image view, part
  pixel counts, captions with phrase spans) and ``synthpedes/masks.npz`` (label maps).

The whole tree is written under a temporary name and renamed at the end (nothing half-written).
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image

from reid_explain._util.io import atomic_path
from reid_explain.data.schema import MARKET1501, PARTS
from reid_explain.errors import InputError
from reid_explain.synthpedes.identities import (
    Identity,
    attribute_entropies,
    market_codes,
    planted_entropies,
    resolve_planted_order,
)
from reid_explain.synthpedes.planning import SynthConfig, SynthPlan, iter_samples, plan
from reid_explain.synthpedes.rendering import LABEL

FORMATS: tuple[str, ...] = ("market", "attributes", "cuhk", "masks")
MARKET_DIR = Path("market1501") / "Market-1501-v15.09.15"
MARKET_SUBDIR = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
ATTRIBUTE_FILE = Path("market1501") / "market_attribute.mat"
CUHK_DIR = Path("CUHK-PEDES")
CUHK_IMAGE_DIR = "synthpedes"  # under CUHK-PEDES/imgs/, as CUHK01/, CUHK03/ ... are there
SIDE_DIR = Path("synthpedes")
MARKER = SIDE_DIR / "annotations.json"
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by reid-explain SynthPedes"

# The official file lists fields in a different order per split; so do we.
_TRAIN_FIELDS = (
    ("age", "backpack", "bag", "handbag")
    + tuple(f"down{c}" for c in MARKET1501["lower_color"].states)
    + tuple(f"up{c}" for c in MARKET1501["upper_color"].states)
    + ("clothes", "down", "up", "hair", "hat", "gender")
)
_TEST_FIELDS = (
    ("age", "backpack", "bag", "handbag", "clothes", "down", "up", "hair", "hat", "gender")
    + tuple(f"up{c}" for c in MARKET1501["upper_color"].states)
    + tuple(f"down{c}" for c in MARKET1501["lower_color"].states)
)


@dataclass(frozen=True)
class ExportSummary:
    """What an export wrote: counts as torchreid will see them, and the main paths."""

    root: Path
    n_train: int
    n_query: int
    n_gallery: int
    n_train_ids: int
    n_test_ids: int
    n_distractors: int
    n_captions: int
    formats: tuple[str, ...]

    def to_json(self) -> dict:
        out = dict(self.__dict__)
        out["root"] = str(self.root)
        out["formats"] = list(self.formats)
        return out


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    """Deterministic high-quality JPEG (no chroma subsampling: colours are the signal here)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """Like ``np.savez_compressed`` but with fixed zip timestamps, so bytes are reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w", force_zip64=True) as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def attribute_mat_bytes(train: list[Identity], test: list[Identity]) -> bytes:
    """``market_attribute.mat`` in the official layout (fixed header text, so reproducible)."""

    def split(identities: list[Identity], fields: tuple[str, ...]) -> dict:
        codes = [market_codes(identity) for identity in identities]
        out: dict = {f: np.array([[c[f] for c in codes]], dtype=np.uint8) for f in fields}
        index = np.empty((1, len(identities)), dtype=object)
        for i, identity in enumerate(identities):
            index[0, i] = f"{identity.pid:04d}"
        out["image_index"] = index
        return out

    buf = io.BytesIO()
    scipy.io.savemat(buf, {"market_attribute": {"train": split(train, _TRAIN_FIELDS),
                                                "test": split(test, _TEST_FIELDS)}})
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER.ljust(116, b" ")
    return bytes(data)


def processed_tokens(caption: str) -> list[str]:
    """CUHK-PEDES-style tokens: lower-case words, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", caption.lower())


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, separators=(",", ":"), ensure_ascii=True) + "\n").encode("ascii")


def _check_root(root: Path) -> None:
    """Refuse to replace a non-empty folder that is not a previous SynthPedes export."""
    if root.exists() and (not root.is_dir() or (any(root.iterdir()) and
                                                not (root / MARKER).is_file())):
        raise InputError(f"{root}: exists and is not a SynthPedes export (no {MARKER}); "
                         f"refusing to replace it. Choose an empty or new folder.")


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """``"all"`` or a comma list (``"market,cuhk"``) → ordered tuple of known formats."""
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"] or not names:
        return FORMATS
    unknown = [n for n in names if n not in FORMATS]
    if unknown:
        raise InputError(f"unknown format(s) {unknown}; known: all, {', '.join(FORMATS)}")
    return tuple(f for f in FORMATS if f in names)


def export_synthpedes(root: str | Path, config: SynthConfig | None = None,
                      formats: str | Iterable[str] = "all") -> ExportSummary:
    """Render the data set of ``config`` and write it under ``root`` in the real formats."""
    config = config or SynthConfig()
    chosen = parse_formats(formats)
    root = Path(root)
    _check_root(root)
    sp = plan(config)
    with atomic_path(root) as tmp:
        summary = _write(tmp, sp, chosen)
    return ExportSummary(root, *summary, chosen)


def _write(tmp: Path, sp: SynthPlan, formats: tuple[str, ...]) -> tuple:
    c = sp.config
    if "market" in formats:
        for sub in MARKET_SUBDIR.values():
            (tmp / MARKET_DIR / sub).mkdir(parents=True, exist_ok=True)
    if "cuhk" in formats:
        (tmp / CUHK_DIR / "imgs" / CUHK_IMAGE_DIR).mkdir(parents=True, exist_ok=True)
    (tmp / SIDE_DIR).mkdir(parents=True, exist_ok=True)
    records, images, labels = [], [], []
    counts = {"train": 0, "query": 0, "gallery": 0}
    n_captions = 0
    for i, sample in enumerate(iter_samples(sp)):
        spec, rendered = sample.spec, sample.rendered
        data = jpeg_bytes(rendered.image, c.jpeg_quality)
        market_path = MARKET_DIR / MARKET_SUBDIR[spec.split] / spec.name
        cuhk_rel = f"{CUHK_IMAGE_DIR}/{spec.name}"
        counts[spec.split] += 1
        if "market" in formats:
            (tmp / market_path).write_bytes(data)
        cuhk_split = None
        if spec.pid != 0:
            cuhk_split = sp.split_of_pid(spec.pid)
            texts = [cap.text for cap in sample.captions]
            n_captions += len(texts)
            records.append({"split": cuhk_split, "captions": texts, "file_path": cuhk_rel,
                            "processed_tokens": [processed_tokens(t) for t in texts],
                            "id": spec.pid})
            if "cuhk" in formats:
                (tmp / CUHK_DIR / "imgs" / cuhk_rel).write_bytes(data)
        images.append({
            "name": spec.name, "pid": spec.pid, "cam": spec.cam, "idx": spec.idx,
            "split": spec.split, "cuhk_split": cuhk_split,
            "market_path": market_path.as_posix(),
            "cuhk_path": (CUHK_DIR / "imgs" / cuhk_rel).as_posix() if spec.pid else None,
            "mask_index": i, "view": rendered.view.to_json(),
            "part_pixels": rendered.part_pixels,
            "captions": [cap.to_json() for cap in sample.captions],
        })
        labels.append(rendered.labels)
    if "attributes" in formats:
        train = [sp.identity_by_pid[p] for p in sp.train_pids]
        test = [sp.identity_by_pid[p] for p in sp.test_pids]
        (tmp / ATTRIBUTE_FILE).parent.mkdir(parents=True, exist_ok=True)
        (tmp / ATTRIBUTE_FILE).write_bytes(attribute_mat_bytes(train, test))
    if "cuhk" in formats:
        (tmp / CUHK_DIR / "reid_raw.json").write_bytes(_json_bytes(records))
    if "masks" in formats:
        (tmp / SIDE_DIR / "masks.npz").write_bytes(npz_bytes({
            "labels": np.stack(labels) if labels else np.zeros((0, c.height, c.width), np.uint8),
            "names": np.array([im["name"] for im in images]),
            "parts": np.array(PARTS),
        }))
    order = resolve_planted_order(c.planted_order)
    annotations = {
        "generator": "SynthPedes", "format_version": 1, "config": c.to_json(),
        "formats": list(formats), "parts": list(PARTS), "labels": {"background": 0, **LABEL},
        "planted": {
            "order": list(order),
            "target_entropy_bits": planted_entropies(c.planted_order, c.planted_decay),
            "empirical_entropy_bits": attribute_entropies(sp.identities),
        },
        "cameras": [cam.to_json() for cam in sp.cameras],
        "train_pids": sp.train_pids, "test_pids": sp.test_pids, "val_pids": sp.val_pids,
        "identities": [identity.to_json() for identity in sp.identities],
        "images": images,
    }
    (tmp / MARKER).write_bytes(_json_bytes(annotations))
    return (counts["train"], counts["query"], counts["gallery"], len(sp.train_pids),
            len(sp.test_pids), len(sp.distractor_identities), n_captions)
