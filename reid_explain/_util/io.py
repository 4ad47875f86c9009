"""Atomic file writes: an output is either complete or absent, never half-written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    Works for files and directories (whatever the body creates at the temporary path).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp{os.getpid()}.", dir=final.parent))
    tmp = tmp_dir / final.name
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Remove the temporary folders that runs killed mid-write (SIGKILL skips every cleanup)
    left beside ``final``: they carry their process id, and that process is gone."""
    removed = []
    for candidate in final.parent.glob(f".{final.name}.tmp*.*"):
        pid_text = candidate.name[len(f".{final.name}.tmp"):].split(".", 1)[0]
        if candidate.is_dir() and pid_text.isdigit() and not _alive(int(pid_text)):
            shutil.rmtree(candidate, ignore_errors=True)
            removed.append(candidate)
    return removed


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def load_torch_file(path: str | os.PathLike, what: str = "checkpoint",
                    mmap: bool = False) -> object:
    """``torch.load`` of a local file with ``weights_only=True``: tensors and plain containers
    only, so a checkpoint cannot run code when it is read. Every failure (missing file, a
    pickle that asks for more than tensors, a corrupt archive) is a project error naming the
    file. ``mmap=True`` maps the tensors instead of reading them (zip-format files only), for a
    caller that wants the plain fields of a large file."""
    import torch

    from ..errors import DataFormatError, InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} {str(path)!r} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise DataFormatError(f"{path}: not a loadable {what} (read with weights_only=True, "
                              f"which allows tensors and plain containers only): "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                              ) from exc


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, inf) replaced by ``None`` and numpy or torch
    scalars and arrays turned into Python values, recursively: what strict JSON can hold. A
    figure that could not be computed is ``null``; its reason belongs in a field beside it."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, str) else k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy and torch scalars and arrays
    if callable(tolist):
        return json_safe(tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return str(obj)


def strict_json(obj: Any, indent: int | None = 2) -> str:
    """``json.dumps`` of :func:`json_safe` ``(obj)`` with ``allow_nan=False``: never a bare
    ``NaN`` or ``Infinity``, which are not JSON and which many readers reject."""
    import json

    return json.dumps(json_safe(obj), indent=indent, allow_nan=False)
