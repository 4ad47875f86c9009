"""Which code made an output: a digest of the installed package and the libraries it runs on.

A report carries the digest in its settings, so that a later reader (the test suite reusing the
report the README's first command wrote, a user comparing two runs) can tell whether the output
still belongs to the code at hand, rather than trusting a file's age or place.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
from pathlib import Path

#: the packages whose files make the outputs (the zoo's weights and cards included)
PACKAGES = ("reid_explain", "reid_explain.plugins", "reid_explain.adapters")
#: the libraries whose versions can change a figure
LIBRARIES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "statsmodels", "shap",
             "captum", "open_clip_torch", "torchreid", "timm", "peft", "Pillow")


def code_digest() -> str:
    """SHA-256 over every file of the package (sources and package data, not bytecode) and the
    versions of the libraries it computes with."""
    digest = hashlib.sha256()
    for name in PACKAGES:
        for root in importlib.import_module(name).__path__:
            root = Path(root)
            for path in sorted(p for p in root.rglob("*") if p.is_file()
                               and "__pycache__" not in p.parts and p.suffix != ".pyc"):
                if name == "reid_explain" and path.relative_to(root).parts[0] in ("plugins",
                                                                                   "adapters"):
                    continue  # hashed under their own package (an installed wheel's layout)
                digest.update(f"{name}/{path.relative_to(root).as_posix()}\0".encode())
                digest.update(path.read_bytes())
    for library in LIBRARIES:
        try:
            version = importlib.metadata.version(library)
        except importlib.metadata.PackageNotFoundError:
            version = "absent"
        digest.update(f"{library}=={version}\0".encode())
    return digest.hexdigest()
