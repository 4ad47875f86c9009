"""Checkpoints cannot run code when read, and every bad file is a project error naming it."""

from __future__ import annotations

import os

import pytest
import torch

from reid_explain._io import load_torch_file
from reid_explain.errors import DataFormatError, InputError
from reid_explain.hosts import build_host
from reid_explain.training.text_image import load_checkpoint


class _RunsCode:
    """A pickle payload that runs a shell command when unpickled without restrictions."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def malicious(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _RunsCode(str(marker))}, path)
    return path, marker


def test_a_checkpoint_that_runs_code_is_refused_unread(malicious):
    path, marker = malicious
    for load in (lambda: load_torch_file(path),
                 lambda: load_checkpoint(path),
                 lambda: build_host("torchreid:osnet_x0_25", path, image_size=(128, 64))):
        with pytest.raises(DataFormatError, match=str(path.name)):
            load()
        assert not marker.exists()


def test_corrupt_missing_and_foreign_checkpoints_are_named(tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04" + os.urandom(200))
    with pytest.raises(DataFormatError, match="corrupt.pt"):
        load_checkpoint(corrupt)
    with pytest.raises(InputError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")
    foreign = tmp_path / "foreign.pt"
    torch.save({"model": {}}, foreign)
    with pytest.raises(DataFormatError, match="not a reid-explain text-image checkpoint"):
        load_checkpoint(foreign)
    partial = tmp_path / "partial.pt"
    torch.save({"format": "reid-explain/text-image/1", "model": {}}, partial)
    with pytest.raises(DataFormatError, match=r"lacks \['clip_config'"):
        load_checkpoint(partial)


def test_a_plain_state_dict_still_loads(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": torch.arange(3.0), "meta": {"epoch": 3, "name": "x"}}, path)
    loaded = load_torch_file(path)
    assert torch.equal(loaded["w"], torch.arange(3.0)) and loaded["meta"]["epoch"] == 3
