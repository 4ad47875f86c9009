"""Reading untrusted files where a crash cannot take the caller down.

scipy's ``.mat`` reader is C code: on some corrupted files it dies with SIGSEGV or SIGBUS
(measured: 16 of 1,101 byte-flipped ``market_attribute.mat`` files), which would kill the
user's training or notebook process. :func:`read_isolated` runs a reader in a child Python
process and brings its result back; a child killed by a signal becomes a
:class:`~reid_explain.errors.DataFormatError` naming the file. The cost is one interpreter
start (about a second), paid once per attribute file.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import DataFormatError


def read_isolated(reader: str, path: str | os.PathLike, what: str = "file",
                  timeout: float = 120.0) -> Any:
    """Run ``reader``, Python source that reads the file named by ``sys.argv[1]`` and writes
    its pickled result to stdout, in a child process; return the result.

    The reader imports only what it needs (not this package, whose import costs seconds) and
    should return its expected errors as values; anything else the child raises, and any
    crash, is a DataFormatError naming ``path``.
    """
    path = Path(path)
    try:
        proc = subprocess.run([sys.executable, "-c", reader, str(path)],
                              capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DataFormatError(f"{path}: reading this {what} took more than {timeout:.0f} s; "
                              f"it is corrupt or not a {what}") from None
    if proc.returncode < 0:
        name = signal.Signals(-proc.returncode).name
        raise DataFormatError(f"{path}: the {what} reader crashed on this file ({name}); the "
                              f"file is corrupt (read in a separate process, so only that "
                              f"process died)")
    if proc.returncode != 0:
        lines = proc.stderr.decode(errors="replace").strip().splitlines()
        raise DataFormatError(f"{path}: not a readable {what} "
                              f"({lines[-1] if lines else f'exit code {proc.returncode}'})")
    # the bytes come from our own child, which ran our reader: not untrusted input
    return pickle.loads(proc.stdout)
