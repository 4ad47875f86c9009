"""The code digest a report carries: it changes with any file of the package or a library
version, and not with bytecode or a second reading."""

from __future__ import annotations

import sys

import pytest

from reid_explain._util import provenance


@pytest.fixture
def package(tmp_path, monkeypatch):
    root = tmp_path / "fakepkg"
    (root / "__pycache__").mkdir(parents=True)
    (root / "__init__.py").write_text("X = 1\n")
    (root / "weights.pt").write_bytes(b"\x00\x01")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(provenance, "PACKAGES", ("fakepkg",))
    yield root
    sys.modules.pop("fakepkg", None)


def test_digest_follows_sources_and_package_data_not_bytecode(package):
    first = provenance.code_digest()
    assert provenance.code_digest() == first and len(first) == 64
    (package / "__pycache__" / "__init__.cpython-311.pyc").write_bytes(b"bytecode")
    assert provenance.code_digest() == first
    (package / "weights.pt").write_bytes(b"\x00\x02")
    changed = provenance.code_digest()
    assert changed != first
    (package / "__init__.py").write_text("X = 2\n")
    assert provenance.code_digest() not in (first, changed)


def test_digest_follows_library_versions(package, monkeypatch):
    first = provenance.code_digest()
    real = provenance.importlib.metadata.version
    monkeypatch.setattr(provenance.importlib.metadata, "version",
                        lambda name: "0.0.0" if name == "torch" else real(name))
    assert provenance.code_digest() != first
