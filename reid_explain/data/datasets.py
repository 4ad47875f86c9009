"""torch Datasets for image ReID (Market-1501 folders + attributes) and text-image ReID.

Both keep a torchreid-style ``.data`` list of ``(img_path, pid, camid, dsetid)`` tuples, so
torchreid's samplers (``RandomIdentitySampler(dataset.data, batch_size, num_instances)``) work on
them unchanged, and both return dict items with torchreid's keys (``img``, ``pid``, ``camid``,
``impath``) so torchreid engines and a plain ``DataLoader`` read them alike.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset, default_collate

from reid_explain.errors import DataFormatError

from .attributes import attribute_codes
from .schema import AttributeSchema
from .text_annotations import TextImageAnnotations, TextImageSplit

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

#: Market-1501 sub-folders by split name, and the attribute split their identities are labelled in.
MARKET_FOLDERS: dict[str, str] = {
    "train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
ATTRIBUTE_SPLIT: dict[str, str] = {"train": "train", "query": "test", "gallery": "test"}
#: torchreid's own file-name pattern: ``0001_c1s1_000151_00.jpg`` -> pid 1, camera 1.
MARKET_NAME = re.compile(r"([-\d]+)_c(\d)")
#: identities beyond this are not ids (Market-1501 has 1,501; DukeMTMC-reID's reach 7,140)
MAX_PID = 10**6
_TORCHREID_SUBDIR = Path("market1501") / "Market-1501-v15.09.15"

Transform = Callable[[Image.Image], Any]


def default_transform(height: int = 256, width: int = 128) -> Transform:
    """Resize to ``height``×``width`` (the usual ReID input), ToTensor, ImageNet normalisation.

    torchvision is imported here, not with the module: it costs about a second (it pulls in
    torch's compiler), which a command that only checks its inputs should not pay."""
    from torchvision import transforms as T

    return T.Compose([T.Resize((height, width)), T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def split_normalisation(transform: Any) -> tuple[Transform, Any] | None:
    """``(per_image, normalise)`` of a torchvision ``Compose`` ending in ``ToTensor()``,
    ``Normalize(mean, std)`` (as :func:`default_transform`), else None.

    ``per_image`` maps a PIL image to a ``(3, H, W)`` uint8 tensor (the transforms before
    ``ToTensor``); ``normalise`` maps a stacked ``(N, 3, H, W)`` uint8 batch to what the items
    hold, with the same float operations (so the same values) as ``ToTensor`` and ``Normalize``
    on each image, done once for the batch instead of a clone, a conversion and two divisions
    per image. ``Normalize``'s mean/std are read when the batch is normalised (callers may set
    them after building the transform)."""
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", None)
    if type(transform) is not T.Compose or not isinstance(steps, list) or len(steps) < 2:
        return None
    to_tensor, normalize = steps[-2:]
    if type(to_tensor) is not T.ToTensor or type(normalize) is not T.Normalize:
        return None
    head = T.Compose([*steps[:-2], T.PILToTensor()])

    def normalise(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(dtype=torch.get_default_dtype()).div(255)
        mean = torch.as_tensor(normalize.mean, dtype=batch.dtype).view(-1, 1, 1)
        std = torch.as_tensor(normalize.std, dtype=batch.dtype).view(-1, 1, 1)
        return batch.sub_(mean).div_(std)

    return head, normalise


def read_image(path: str | os.PathLike) -> Image.Image:
    """An RGB PIL image, or a DataFormatError naming the file."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise DataFormatError(f"{path}: image not found") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise DataFormatError(f"{path}: not a readable image ({exc})") from None


# --------------------------------------------------------------------------- Market-1501 folders

def parse_market_name(path: str | os.PathLike) -> tuple[int, int]:
    """``(pid, camid)`` from a Market-1501 file name; camid is 0-based as in torchreid."""
    match = MARKET_NAME.search(Path(path).name)
    if match is None:
        raise DataFormatError(f"{path}: file name does not match Market-1501's "
                              "'<pid>_c<camera>...' pattern")
    try:
        pid = int(match.group(1))
    except ValueError:
        raise DataFormatError(f"{path}: identity {match.group(1)!r} is not an integer") from None
    if pid != -1 and not 0 <= pid <= MAX_PID:
        raise DataFormatError(f"{path}: identity {pid} is neither -1 (junk) nor in "
                              f"0..{MAX_PID}")
    camera = int(match.group(2))
    if camera == 0:
        raise DataFormatError(f"{path}: camera 0; Market-1501 cameras are numbered from 1")
    return pid, camera - 1


def resolve_market_root(root: str | os.PathLike) -> Path:
    """The folder holding ``bounding_box_train/`` etc.: ``root`` itself or torchreid's layout."""
    root = Path(root)
    for candidate in (root, root / _TORCHREID_SUBDIR, root / _TORCHREID_SUBDIR.name):
        if any((candidate / folder).is_dir() for folder in MARKET_FOLDERS.values()):
            return candidate
    raise DataFormatError(f"{root}: no Market-1501 folders ({', '.join(MARKET_FOLDERS.values())})"
                          f" here nor under {root / _TORCHREID_SUBDIR}")


def scan_market_folder(folder: str | os.PathLike,
                       relabel: bool = False) -> list[tuple[str, int, int]]:
    """``(img_path, pid, camid)`` per ``*.jpg``, sorted by name, as torchreid's ``process_dir``.

    Junk images (pid -1) are skipped; distractors (pid 0) are kept. ``relabel`` maps pids to
    0..N-1 in sorted order (for training).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFormatError(f"{folder}: Market-1501 folder not found")
    items = []
    for path in sorted(folder.glob("*.jpg")):
        pid, camid = parse_market_name(path)
        if pid == -1:
            continue
        items.append((str(path), pid, camid))
    if relabel:
        label = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in items}))}
        items = [(p, label[pid], camid) for p, pid, camid in items]
    return items


class ImageReidDataset(Dataset):
    """One split (train/query/gallery) of a Market-1501-style folder, with per-identity attributes.

    Items are dicts: ``img`` (transformed image), ``pid`` (relabelled to 0..N-1 for train, as in
    torchreid), ``camid`` (0-based), ``impath``, ``original_pid``, ``attributes`` (int64 codes in
    schema order, -1 unknown — see :func:`~reid_explain.data.attributes.attribute_codes`; shape
    (0,) without an attribute table). ``.data`` is torchreid's ``(img_path, pid, camid, 0)`` list.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *,
                 transform: Transform | None = None,
                 attributes: pd.DataFrame | None = None,
                 schema: str | AttributeSchema | None = None,
                 attribute_split: str | None = None,
                 relabel: bool | None = None) -> None:
        if split not in MARKET_FOLDERS:
            raise ValueError(f"split must be one of {list(MARKET_FOLDERS)}, got {split!r}")
        self.root = resolve_market_root(root)
        self.split = split
        self.transform = transform if transform is not None else default_transform()
        relabel = split == "train" if relabel is None else relabel
        folder = self.root / MARKET_FOLDERS[split]
        raw = scan_market_folder(folder)
        if not raw:
            raise DataFormatError(f"{folder}: no *.jpg images")
        self.original_pids = [pid for _, pid, _ in raw]
        label = {pid: i for i, pid in enumerate(sorted(set(self.original_pids)))}
        self.data: list[tuple[str, int, int, int]] = [
            (p, label[pid] if relabel else pid, cam, 0) for p, pid, cam in raw]
        self.num_pids = len(set(pid for _, pid, _, _ in self.data))
        self.num_cams = len(set(cam for _, _, cam, _ in self.data))
        self.attribute_names: tuple[str, ...] = ()
        self._codes: list[torch.Tensor] = [torch.empty(0, dtype=torch.long)] * len(self.data)
        if attributes is not None:
            self._attach(attributes, schema, attribute_split or ATTRIBUTE_SPLIT[split])

    def _attach(self, table: pd.DataFrame, schema: str | AttributeSchema | None,
                attribute_split: str) -> None:
        codes = attribute_codes(table, schema)
        present = {s for s, _ in codes.keys}
        if attribute_split not in present:
            raise DataFormatError(f"{table.attrs.get('source', '<table>')}: no attribute split "
                                  f"{attribute_split!r} (have {sorted(present)}); pass "
                                  "attribute_split=")
        unknown = torch.full((len(codes.attributes),), -1, dtype=torch.long)
        by_pid = {pid: torch.as_tensor(codes.codes[i]) for i, (s, pid) in enumerate(codes.keys)
                  if s == attribute_split}
        self.attribute_names = codes.attributes
        self._codes = [by_pid.get(pid, unknown) for pid in self.original_pids]

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        img_path, pid, camid, _ = self.data[index]
        return {"img": self.transform(read_image(img_path)), "pid": pid, "camid": camid,
                "impath": img_path, "original_pid": self.original_pids[index],
                "attributes": self._codes[index]}

    def load_images(self, indices: Sequence[int]) -> torch.Tensor:
        """The ``img`` of items ``indices`` as one ``(N, 3, H, W)`` batch, equal to stacking
        the items' images; with a ``ToTensor``, ``Normalize`` transform (the default) the
        conversion and normalisation run once on the batch (:func:`split_normalisation`)."""
        split = split_normalisation(self.transform)
        if split is None:
            return torch.stack([self.transform(read_image(self.data[int(i)][0]))
                                for i in indices])
        per_image, normalise = split
        return normalise(torch.stack([per_image(read_image(self.data[int(i)][0]))
                                      for i in indices]))


# --------------------------------------------------------------------------- text-image

class TextImageDataset(Dataset):
    """One split of a text-image data set: one item per caption (IRRA's training view).

    Items: ``img``, ``caption``, ``pid`` (0..N-1 within the split), ``image_id``, ``impath``,
    ``caption_index`` and, where ``side`` knows the image, ``phrases`` (the entry for this caption)
    and ``masks`` (passed through). ``side`` maps an image path — resolved or as written in the
    JSON — to ``{"phrases": [per-caption list, ...], "masks": anything}``. Use
    :func:`collate_text_batch` when items carry phrases or masks of varying size.
    """

    def __init__(self, annotations: TextImageAnnotations | TextImageSplit, split: str = "train",
                 *, transform: Transform | None = None,
                 side: Mapping[str, Mapping[str, Any]] | None = None) -> None:
        self.split = annotations if isinstance(annotations, TextImageSplit) \
            else annotations[split]
        self.transform = transform if transform is not None else default_transform()
        self.items: list[tuple[int, int]] = [(r, c) for r, rec in enumerate(self.split.records)
                                             for c in range(len(rec.captions))]
        self.data: list[tuple[str, int, int, int]] = [
            (str(self.split.records[r].image_path), self.split.records[r].pid, 0, 0)
            for r, _ in self.items]
        self.side = self._check_side(side) if side else {}

    def _check_side(self, side: Mapping[str, Mapping[str, Any]]) -> dict[int, Mapping[str, Any]]:
        """Side entries by record position, with per-caption phrase lists checked up front."""
        out: dict[int, Mapping[str, Any]] = {}
        for r, rec in enumerate(self.split.records):
            entry = side.get(str(rec.image_path), side.get(rec.file_path))
            if entry is None:
                continue
            phrases = entry.get("phrases")
            if phrases is not None and len(phrases) != len(rec.captions):
                raise DataFormatError(f"side mapping for {rec.file_path}: field 'phrases' has "
                                      f"{len(phrases)} entries for {len(rec.captions)} captions")
            out[r] = entry
        return out

    @property
    def num_pids(self) -> int:
        return self.split.num_pids

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        r, c = self.items[index]
        rec = self.split.records[r]
        item: dict[str, Any] = {
            "img": self.transform(read_image(rec.image_path)), "caption": rec.captions[c],
            "pid": rec.pid, "image_id": rec.image_id, "impath": str(rec.image_path),
            "caption_index": c}
        entry = self.side.get(r)
        if entry is not None:
            if entry.get("phrases") is not None:
                item["phrases"] = entry["phrases"][c]
            if "masks" in entry:
                item["masks"] = entry["masks"]
        return item


def collate_text_batch(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors and numbers; keep captions, paths, phrases and masks as per-item lists.

    Items without ``phrases``/``masks`` get None there, so a batch mixing known and unknown
    images still collates.
    """
    listed = ("caption", "impath", "phrases", "masks")
    batch = default_collate([{k: v for k, v in it.items() if k not in listed} for it in items])
    for key in listed:
        if any(key in it for it in items):
            batch[key] = [it.get(key) for it in items]
    return batch
