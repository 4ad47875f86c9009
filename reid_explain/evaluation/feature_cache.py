"""Gallery features computed once and stored, for reuse across runs and methods.

An evaluation of several methods (or a rerun with other metrics) on the same host and gallery
embeds the same gallery every time. :class:`FeatureCache` keeps the L2-normalised features in
one safetensors file per (host weights, adapter, data, image size) key: tensors only, no
pickle, read through a memory map. A file whose key differs (other weights, other images, other
torch) is not used; it is recomputed and replaced, atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._util.io import atomic_path
from ..errors import InputError


def _update(digest: Any, name: str, value: Tensor) -> None:
    value = value.detach().cpu().contiguous()
    digest.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
    digest.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())


def model_fingerprint(model: nn.Module) -> str:
    """SHA-256 of the host's state (every parameter and buffer: name, dtype, shape, values)."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        if isinstance(value, Tensor):
            _update(digest, name, value)
    return digest.hexdigest()


def tensor_fingerprint(values: Tensor) -> str:
    """SHA-256 of one tensor (dtype, shape, values), e.g. a gallery held in memory."""
    digest = hashlib.sha256()
    _update(digest, "", values)
    return digest.hexdigest()


def array_fingerprint(values: Any) -> str:
    """SHA-256 of an array of labels (identities, cameras) or names (file paths)."""
    return hashlib.sha256(json.dumps(np.asarray(values).tolist()).encode()).hexdigest()


class FeatureCache:
    """Stored feature matrices in ``folder``, one ``<name>-<key hash>.safetensors`` per key.

    ``key`` is a JSON-able dict saying what the features depend on; the whole key is written in
    the file's metadata and compared on load, so a hash collision cannot return wrong features.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        if self.folder.exists() and not self.folder.is_dir():
            raise InputError(f"feature cache {self.folder} is a file, not a folder")

    @staticmethod
    def _key_text(key: dict[str, Any]) -> str:
        return json.dumps(key, sort_keys=True, default=str)

    def path(self, name: str, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(self._key_text(key).encode()).hexdigest()[:20]
        return self.folder / f"{name}-{digest}.safetensors"

    def load(self, name: str, key: dict[str, Any]) -> Tensor | None:
        """The stored features of ``key``, or None when absent or stored for another key."""
        from safetensors import safe_open

        path = self.path(name, key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") != self._key_text(key):
                    return None
                return f.get_tensor("features")
        except Exception:  # a truncated or foreign file: recompute rather than fail
            return None

    def save(self, name: str, key: dict[str, Any], features: Tensor) -> Path:
        """Store ``features`` for ``key`` (all or nothing)."""
        from safetensors.torch import save_file

        path = self.path(name, key)
        with atomic_path(path) as tmp:
            save_file({"features": features.detach().cpu().contiguous()}, str(tmp),
                      metadata={"key": self._key_text(key)})
        return path
