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

from .schema import PARTS

CUHK_IMAGE_PREFIX = "CUHK-PEDES/imgs/"


def load_synthpedes_side(root: str | Path) -> dict[str, dict[str, Any]]:
    """``{path: {"phrases": [[phrase dict, ...] per caption], "masks": bool (P, H, W),
    "parts": PARTS, "pid": int, "view": dict}}`` for every image of the export at ``root``."""
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
    with np.load(masks_path) as npz:
        if "labels" not in npz:
            raise DataFormatError(f"{masks_path}: missing array 'labels'")
        labels = npz["labels"]
    if tuple(annotations.get("parts", ())) != PARTS:
        raise DataFormatError(f"{annotations_path}: field 'parts' is {annotations.get('parts')}, "
                              f"expected {list(PARTS)}")
    part_ids = np.arange(1, len(PARTS) + 1, dtype=labels.dtype)[:, None, None]
    side: dict[str, dict[str, Any]] = {}
    for i, image in enumerate(annotations.get("images", [])):
        try:
            label_map = labels[int(image["mask_index"])]
            entry = {"phrases": [c["phrases"] for c in image["captions"]],
                     "masks": label_map[None] == part_ids, "parts": PARTS,
                     "pid": int(image["pid"]), "view": image.get("view")}
        except (KeyError, IndexError, TypeError) as exc:
            raise DataFormatError(f"{annotations_path}: images[{i}] is malformed "
                                  f"({type(exc).__name__}: {exc})") from None
        if image.get("cuhk_path"):
            side[image["cuhk_path"].removeprefix(CUHK_IMAGE_PREFIX)] = entry
        if image.get("market_path"):
            side[str((root / image["market_path"]).resolve())] = entry
    return side
