"""What the zoo holds and how a checkpoint becomes an ordinary host model.

A zoo model is two files in ``reid_explain/zoo/weights/``: ``<name>.safetensors`` (tensors only,
no pickle) and ``<name>.json``, its model card: how it was built (family, architecture), the
SynthPedes data it saw, the training command and settings, wall time, and its retrieval scores
on the held-out test split. :func:`load` rebuilds the architecture from the card and fills it from
the safetensors file; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import DataFormatError, InputError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
#: environment variable naming another folder of cards and weights (e.g. checkpoints retrained
#: with ``reid-explain zoo train NAME --out DIR``)
ROOT_VARIABLE = "REID_EXPLAIN_ZOO_DIR"


def zoo_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$REID_EXPLAIN_ZOO_DIR``, else the package's weights folder."""
    return Path(root or os.environ.get(ROOT_VARIABLE) or WEIGHTS_DIR)
CARD_FORMAT = "reid-explain/zoo-card/1"
#: safetensors keys of a sparse token embedding (rows the training captions use; see docs/zoo.md)
TOKEN_ROWS, TOKEN_VALUES = "token_embedding.rows", "token_embedding.values"


@dataclass(frozen=True)
class ZooSpec:
    """Everything that determines a zoo checkpoint: rerunning it reproduces the weights."""

    name: str
    family: str  # "torchreid" or "open_clip"
    task: str  # "image" (image-to-image ReID) or "text-image"
    summary: str
    architecture: dict[str, Any]
    data: dict[str, Any]  # SynthConfig fields
    training: dict[str, Any]
    targets: dict[str, float] = field(default_factory=dict)


#: The SynthPedes set every zoo model is trained on (fixed: the test split is the same for all).
ZOO_DATA = {"n_ids": 1200, "images_per_id": 8, "seed": 2026, "height": 128, "width": 64,
            "train_fraction": 0.75, "val_fraction": 0.1, "captions_per_image": 2}

SPECS: dict[str, ZooSpec] = {spec.name: spec for spec in (
    ZooSpec(
        name="osnet-synthpedes", family="torchreid", task="image",
        summary="torchreid OSNet x0.25 for image ReID, softmax (label smoothing) + batch-hard "
                "triplet, trained from scratch on SynthPedes",
        architecture={"name": "osnet_x0_25", "loss": "triplet"},
        data=ZOO_DATA,
        training={"steps": 4000, "p": 16, "k": 4, "lr": 1e-3, "weight_decay": 5e-4,
                  "warmup": 0.05, "margin": 0.3, "label_smooth": True, "eval_every": 400,
                  "seed": 0},
        targets={"R1": 80.0}),
    ZooSpec(
        name="clip-synthpedes", family="open_clip", task="text-image",
        summary="tiny open_clip CLIP (ViT 4x128, patch 8; text 3x128) for text-to-image ReID, "
                "IRRA's SDM, trained from scratch on SynthPedes captions",
        architecture={"image_size": [128, 64], "patch_size": 8, "width": 128, "layers": 4,
                      "head_width": 32, "text_width": 128, "text_layers": 3, "text_heads": 4,
                      "embed_dim": 128, "context_length": 64},
        data=ZOO_DATA,
        training={"epochs": 16, "batch_size": 64, "lr": 5e-4, "weight_decay": 0.02,
                  "objective": "sdm", "logit_scale": 50.0, "eval_every": 300, "seed": 0},
        targets={"R1": 40.0}),
)}


def available() -> list[str]:
    """Names of the zoo's models (shipped or not yet trained)."""
    return sorted(SPECS)


def spec(name: str) -> ZooSpec:
    if name not in SPECS:
        raise InputError(f"no zoo model {name!r}; known: {available()}")
    return SPECS[name]


def weights_path(name: str, root: str | Path | None = None) -> Path:
    return zoo_root(root) / f"{spec(name).name}.safetensors"


def card_path(name: str, root: str | Path | None = None) -> Path:
    return zoo_root(root) / f"{spec(name).name}.json"


def card(name: str, root: str | Path | None = None) -> dict[str, Any]:
    """The model card of a trained zoo model (``reid-explain zoo train`` writes it)."""
    path = card_path(name, root)
    if not path.is_file():
        raise InputError(f"zoo model {name!r} has no card at {path}: train it with "
                         f"'reid-explain zoo train {name}'")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataFormatError(f"{path}: not a JSON model card ({exc})") from None
    if not isinstance(payload, dict) or payload.get("format") != CARD_FORMAT:
        raise DataFormatError(f"{path}: not a reid-explain zoo card (format {CARD_FORMAT!r})")
    checks = {"family": lambda v: v in ("torchreid", "open_clip"),
              "architecture": lambda v: isinstance(v, dict),
              "weights_sha256": lambda v: isinstance(v, str)}
    for key, ok in checks.items():
        if not ok(payload.get(key)):
            raise DataFormatError(f"{path}: field {key!r} is missing or malformed "
                                  f"({payload.get(key)!r})")
    return payload


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(name: str, card_data: dict[str, Any]) -> nn.Module:
    """The untrained architecture a card describes (random init, nothing downloaded)."""
    arch = card_data["architecture"]
    if card_data["family"] == "torchreid":
        from .._util.lazy import import_torchreid

        torchreid = import_torchreid()
        return torchreid.models.build_model(arch["name"], num_classes=card_data["num_classes"],
                                            loss=arch.get("loss", "softmax"), pretrained=False)
    if card_data["family"] == "open_clip":
        from ..training.text_image import TinyClipConfig, tiny_clip

        return tiny_clip(TinyClipConfig(**{k: tuple(v) if isinstance(v, list) else v
                                           for k, v in arch.items()}))
    raise DataFormatError(f"zoo card of {name!r}: unknown family {card_data['family']!r}")


def dense_state(name: str, tensors: dict[str, torch.Tensor], model: nn.Module
                ) -> dict[str, torch.Tensor]:
    """A full state dict from the stored tensors: a sparse token embedding is widened with zero
    rows for tokens the training captions never used."""
    if TOKEN_ROWS not in tensors:
        return tensors
    rows, values = tensors.pop(TOKEN_ROWS), tensors.pop(TOKEN_VALUES)
    table = torch.zeros_like(model.token_embedding.weight)
    if rows.dim() != 1 or values.shape != (len(rows), table.shape[1]) or \
            (len(rows) and (int(rows.min()) < 0 or int(rows.max()) >= len(table))):
        raise DataFormatError(f"zoo model {name!r}: sparse token embedding has rows "
                              f"{tuple(rows.shape)} and values {tuple(values.shape)} for a "
                              f"{tuple(table.shape)} table")
    table[rows.long()] = values.to(table.dtype)
    tensors["token_embedding.weight"] = table
    return tensors


def load(name: str, device: str | torch.device = "cpu", root: str | Path | None = None
         ) -> nn.Module:
    """A trained zoo model in eval mode: an ordinary torchreid or open_clip module.

    Reads only the card (JSON) and the safetensors file; checks the file's SHA-256 against
    the card, so a truncated or swapped file is refused rather than half-loaded.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    info = card(name, root)
    path = weights_path(name, root)
    if not path.is_file():
        raise InputError(f"zoo model {name!r}: weights file {path} is missing")
    digest = sha256(path)
    if digest != info.get("weights_sha256"):
        raise DataFormatError(f"{path}: SHA-256 {digest[:12]}… does not match its card "
                              f"({str(info.get('weights_sha256'))[:12]}…)")
    try:
        model = build(name, info)
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as exc:
        raise DataFormatError(f"{card_path(name, root)}: its architecture fields do not build "
                              f"a model ({type(exc).__name__}: {exc})") from None
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise DataFormatError(f"{path}: not a readable safetensors file ({exc})") from None
    try:
        model.load_state_dict(dense_state(name, tensors, model))
    except RuntimeError as exc:
        raise DataFormatError(f"{path}: does not fit the architecture in its card ({exc})"
                              ) from None
    return model.to(device).eval()
