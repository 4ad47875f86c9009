"""Building host models from a short spec and a local weights file (no downloads).

``family:name`` with family ``torchreid`` (``build_model`` + ``load_pretrained_weights``),
``open_clip`` (``create_model(name, pretrained=<file>, force_image_size=...)``), ``timm``
(``create_model(name, pretrained_cfg_overlay=dict(file=<file>))``), ``zoo`` (a model trained
on SynthPedes and shipped in the package, :func:`reid_explain.zoo.load`), or ``train`` (a
checkpoint of ``reid-explain train --task text-image``: the CLIP and the plugin heads it was
trained with, so the report can show the PPIM head's own phrase maps). Weights are always a
local file: nothing is fetched from a hub.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import DataFormatError, InputError

FAMILIES = ("torchreid", "open_clip", "timm", "zoo", "train")
#: ``train:NAME``: the tasks whose checkpoints carry a host (``reid-explain train --task``)
TRAIN_TASKS = ("text-image",)


@dataclass
class Host:
    """A built host and what its checkpoint says beyond the weights."""

    model: nn.Module
    #: (height, width) the model was trained at, where the spec knows it (zoo, train)
    image_size: tuple[int, int] | None = None
    #: the trained PPIM of a ``train:`` checkpoint (``explainify(model, ppim=...)``), or None
    ppim: Any = None
    #: True when the model admits no input size but ``image_size`` (a ViT whose position
    #: embeddings were built for it: the zoo CLIP, ``train:`` checkpoints)
    fixed_size: bool = False


def _weights_file(weights: str | os.PathLike | None) -> str | None:
    if weights is None:
        return None
    path = Path(weights)
    if not path.is_file():
        raise InputError(f"weights file {str(path)!r} does not exist")
    return str(path)


def check_spec(spec: str, weights: str | os.PathLike | None = None) -> tuple[str, str]:
    """``(family, name)`` of a host spec, checked without building anything: the family, a
    zoo model's name, and that a weights file exists (so a command can refuse a typo before
    any slow work)."""
    family, _, name = spec.partition(":")
    if family not in FAMILIES or not name:
        raise InputError(f"model spec {spec!r} must be family:name with family one of "
                         f"{FAMILIES}, e.g. torchreid:osnet_x1_0, open_clip:ViT-B-16, "
                         "timm:vit_base_patch16_224, zoo:osnet-synthpedes, train:text-image")
    if family == "train":
        if name not in TRAIN_TASKS:
            raise InputError(f"model spec {spec!r}: train checkpoints are of the tasks "
                             f"{TRAIN_TASKS}, e.g. train:text-image")
        if weights is None:
            raise InputError(f"{spec}: give the checkpoint of 'reid-explain train --task "
                             f"{name}' as --weights")
    if family == "zoo":
        if weights is not None:
            raise InputError(f"{spec}: zoo models carry their own weights; drop --weights")
        from ..zoo.registry import spec as zoo_spec

        zoo_spec(name)
    else:
        _weights_file(weights)
    return family, name


def native_image_size(spec: str, weights: str | os.PathLike | None = None
                      ) -> tuple[int, int] | None:
    """(height, width) a host was trained at, where its spec records it (zoo models, ``train:``
    checkpoints), else None: explaining a model at its own input size avoids a resolution
    shift, and a CLIP's position embeddings admit no other."""
    family, name = check_spec(spec, weights)
    if family == "zoo":
        from ..zoo.registry import ZOO_DATA
        from ..zoo.registry import spec as zoo_spec

        size = zoo_spec(name).architecture.get("image_size",
                                               (ZOO_DATA["height"], ZOO_DATA["width"]))
        return (int(size[0]), int(size[1]))
    if family == "train":
        from ..training.text_image import read_checkpoint

        return _checkpoint_image_size(read_checkpoint(_weights_file(weights), mmap=True), weights)
    return None


def _checkpoint_image_size(payload: dict[str, Any], weights: Any) -> tuple[int, int]:
    try:
        size = payload["clip_config"]["image_size"]
        return (int(size[0]), int(size[1]))
    except (KeyError, TypeError, IndexError, ValueError):
        raise DataFormatError(f"{weights}: text-image checkpoint has no clip_config "
                              "image_size") from None


def load_host(spec: str, weights: str | os.PathLike | None = None,
              image_size: tuple[int, int] = (256, 128), num_classes: int = 1) -> Host:
    """The host of ``family:name`` in eval mode, its training size and, for a ``train:``
    checkpoint, the trained PPIM."""
    family, name = check_spec(spec, weights)
    if family == "train":
        from ..training.text_image import load_checkpoint

        model, session, payload = load_checkpoint(_weights_file(weights))
        ppim = session.losses.get("ppim") if session is not None else None
        return Host(model.eval(), _checkpoint_image_size(payload, weights), ppim,
                    fixed_size=True)
    if family == "zoo":
        from ..zoo.registry import spec as zoo_spec

        return Host(build_host(spec, weights, image_size, num_classes),
                    native_image_size(spec, weights),
                    fixed_size="image_size" in zoo_spec(name).architecture)
    return Host(build_host(spec, weights, image_size, num_classes))


def build_host(spec: str, weights: str | os.PathLike | None = None,
               image_size: tuple[int, int] = (256, 128), num_classes: int = 1) -> nn.Module:
    """A host model in eval mode from ``family:name`` and an optional local weights file."""
    family, name = check_spec(spec, weights)
    if family == "train":
        return load_host(spec, weights).model
    if family == "zoo":
        from ..zoo import load

        return load(name)
    path = _weights_file(weights)
    if family == "torchreid":
        from .._util.lazy import import_torchreid

        torchreid = import_torchreid()
        try:
            model = torchreid.models.build_model(name, num_classes=num_classes, pretrained=False)
        except KeyError as exc:
            raise InputError(f"torchreid has no model {name!r}: {exc}") from None
        if path is not None:
            # torchreid reads the file with torch.load's default, weights_only=True from the
            # torch floor this project declares (2.6): a checkpoint cannot run code
            try:
                torchreid.utils.load_pretrained_weights(model, path)
            except Exception as exc:
                raise DataFormatError(f"{path}: torchreid could not load it as a checkpoint "
                                      f"of {name}: {_first_line(exc)}") from exc
    elif family == "open_clip":
        import open_clip

        if name not in open_clip.list_models():
            raise InputError(f"open_clip has no model config {name!r}; add one with "
                             "open_clip.add_model_config(path)")
        try:  # open_clip reads the file with torch.load(weights_only=True)
            model = open_clip.create_model(name, pretrained=path, force_image_size=image_size)
        except Exception as exc:
            if path is None:
                raise
            raise DataFormatError(f"{path}: open_clip could not load it as weights of {name}: "
                                  f"{_first_line(exc)}") from exc
    elif family == "timm":
        import timm

        overlay = {"file": path} if path is not None else None
        try:  # timm reads the file with torch.load(weights_only=True)
            model = timm.create_model(name, pretrained=path is not None, num_classes=0,
                                      img_size=image_size, pretrained_cfg_overlay=overlay)
        except Exception as exc:
            if path is None:
                raise InputError(f"timm could not build {name!r}: {exc}") from None
            raise DataFormatError(f"{path}: timm could not load it as weights of {name}: "
                                  f"{_first_line(exc)}") from exc
    return model.eval()


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
