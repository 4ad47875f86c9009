"""Atomic file writes: an output is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Works for files and directories (whatever the body creates at the temporary path).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint") -> object:
    """``torch.load`` of a local file with ``weights_only=True``: tensors and plain containers
    only, so a checkpoint cannot run code when it is read. Every failure (missing file, a
    pickle that asks for more than tensors, a corrupt archive) is a project error naming the
    file."""
    import torch

    from .errors import DataFormatError, InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise DataFormatError(f"{path}: not a loadable {what} (read with weights_only=True, "
                              f"which allows tensors and plain containers only): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                              ) from exc
