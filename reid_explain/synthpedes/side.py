"""Reading a SynthPedes export's side files (part masks and phrase spans) back.

The side files (``synthpedes/annotations.json`` + ``synthpedes/masks.npz``) carry what the real
formats cannot: per-image part masks and, per caption, the phrase spans linked to parts. This
turns them into the ``side`` mapping that :class:`~reid_explain.data.datasets.TextImageDataset`
accepts, keyed by the CUHK-PEDES ``file_path`` and by the absolute Market-1501 image path.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from reid_explain.errors import DataFormatError

from ..data.schema import PARTS

CUHK_IMAGE_PREFIX = "CUHK-PEDES/imgs/"


def _index(value: Any, where: str, upper: int | None = None) -> int:
    """A non-negative integer field (``upper``: exclusive bound), or an error naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise DataFormatError(f"{where}: expected a non-negative integer, got {value!r}")
    if value < 0 or (upper is not None and value >= upper):
        bound = "" if upper is None else f" below {upper}"
        raise DataFormatError(f"{where}: {value} is not a non-negative integer{bound}")
    return int(value)


def _relative_path(root: Path, value: Any, where: str) -> str:
    """A path inside the export: relative, without '..', resolving under ``root``."""
    if not isinstance(value, str) or not value:
        raise DataFormatError(f"{where}: expected a relative path, got {value!r}")
    path = Path(value)
    if path.is_absolute() or ".." in path.parts or \
            not (root / path).resolve().is_relative_to(root.resolve()):
        raise DataFormatError(f"{where}: {value!r} leaves the data set root")
    return value


def _read_labels(masks_path: Path, n_parts: int) -> np.ndarray:
    """The ``labels`` array of ``masks.npz``: (N, H, W) integers in 0..n_parts."""
    try:
        with np.load(masks_path, allow_pickle=False) as npz:
            if "labels" not in npz:
                raise DataFormatError(f"{masks_path}: missing array 'labels'")
            labels = npz["labels"]
    except DataFormatError:
        raise
    except Exception as exc:  # BadZipFile, EOFError, zlib.error, ValueError, OSError, ...
        raise DataFormatError(f"{masks_path}: not a readable .npz archive "
                              f"({type(exc).__name__}: {exc})") from None
    if labels.ndim != 3 or not np.issubdtype(labels.dtype, np.integer):
        raise DataFormatError(f"{masks_path}: 'labels' must be (N, H, W) integers, got "
                              f"{labels.dtype} {labels.shape}")
    if labels.size and (int(labels.min()) < 0 or int(labels.max()) > n_parts):
        raise DataFormatError(f"{masks_path}: 'labels' values must be 0..{n_parts} (0 = "
                              f"background), found {int(labels.min())}..{int(labels.max())}")
    return labels


def load_synthpedes_side(root: str | Path) -> dict[str, dict[str, Any]]:
    """``{path: {"phrases": [[phrase dict, ...] per caption], "masks": bool (P, H, W),
    "parts": PARTS, "pid": int, "view": dict}}`` for every image of the export at ``root``.

    Everything read is checked first; any defect is a :class:`DataFormatError` naming the file
    and the field (docs/data.md).
    """
    root = Path(root)
    annotations_path = root / "synthpedes" / "annotations.json"
    masks_path = root / "synthpedes" / "masks.npz"
    for path in (annotations_path, masks_path):
        if not path.is_file():
            raise DataFormatError(f"{path}: SynthPedes side file not found (export with "
                                  "formats including 'masks')")
    try:
        annotations = json.loads(annotations_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataFormatError(f"{annotations_path}: not valid UTF-8 JSON ({exc})") from None
    if not isinstance(annotations, dict):
        raise DataFormatError(f"{annotations_path}: expected a JSON object at the top level")
    parts = annotations.get("parts")
    if not isinstance(parts, list) or tuple(parts) != PARTS:
        raise DataFormatError(f"{annotations_path}: field 'parts' is {annotations.get('parts')}, "
                              f"expected {list(PARTS)}")
    images = annotations.get("images")
    if not isinstance(images, list):
        raise DataFormatError(f"{annotations_path}: field 'images' must be a list, got "
                              f"{type(images).__name__}")
    labels = _read_labels(masks_path, len(PARTS))
    part_ids = np.arange(1, len(PARTS) + 1, dtype=labels.dtype)[:, None, None]
    side: dict[str, dict[str, Any]] = {}
    for i, image in enumerate(images):
        where = f"{annotations_path}: images[{i}]"
        if not isinstance(image, dict):
            raise DataFormatError(f"{where}: expected an object")
        try:
            label_map = labels[_index(image["mask_index"], f"{where}.mask_index", len(labels))]
            captions = image["captions"]
            if not isinstance(captions, list) or not all(
                    isinstance(c, dict) and isinstance(c.get("phrases"), list)
                    for c in captions):
                raise DataFormatError(f"{where}.captions: expected a list of objects with a "
                                      "'phrases' list")
            entry = {"phrases": [c["phrases"] for c in captions],
                     "masks": label_map[None] == part_ids, "parts": PARTS,
                     "pid": _index(image["pid"], f"{where}.pid"), "view": image.get("view")}
        except KeyError as exc:
            raise DataFormatError(f"{where}: missing field {exc}") from None
        keys = []
        if image.get("cuhk_path"):
            keys.append(_relative_path(root, image["cuhk_path"], f"{where}.cuhk_path")
                        .removeprefix(CUHK_IMAGE_PREFIX))
        if image.get("market_path"):
            rel = _relative_path(root, image["market_path"], f"{where}.market_path")
            keys.append(str((root / rel).resolve()))
        for key in keys:
            if key in side:
                raise DataFormatError(f"{where}: image {key!r} is listed twice")
            side[key] = entry
    return side
