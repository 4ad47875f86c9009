"""Checkpoints cannot run code when read, and every bad file is a project error naming it."""

from __future__ import annotations

import os

import pytest
import torch

from reid_explain._util.io import load_torch_file
from reid_explain.errors import DataFormatError, InputError
from reid_explain.explain.hosts import build_host
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


@pytest.mark.parametrize("argv", [
    ["evaluate", "--model", "torchreid:osnet_x0_25"],
    ["evaluate", "--model", "open_clip:RN50"],
    ["evaluate", "--model", "timm:vit_tiny_patch16_224"],
    ["report", "--model", "torchreid:osnet_x0_25"],
], ids=["evaluate torchreid", "evaluate open_clip", "evaluate timm", "report torchreid"])
def test_every_cli_weights_flag_refuses_a_checkpoint_that_runs_code(malicious, tmp_path,
                                                                    argv, capsys):
    from reid_explain.cli import main

    path, marker = malicious
    data = tmp_path / "data"  # looks like Market-1501 to the checks run before the host
    for folder in ("query", "bounding_box_test"):
        (data / folder).mkdir(parents=True)
        (data / folder / "0001_c1s1_000151_00.jpg").write_bytes(b"")
    code = main([*argv, "--weights", str(path), "--data", str(data),
                 "--out", str(tmp_path / "out")])
    assert code == 2 and not marker.exists()
    assert f"{path.name}:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_moe_host_weights_flag_refuses_a_checkpoint_that_runs_code(malicious, tmp_path,
                                                                   capsys):
    from reid_explain.cli import main
    from reid_explain.synthpedes import SynthConfig, export_synthpedes

    path, marker = malicious
    export_synthpedes(tmp_path / "data", SynthConfig(n_ids=8, images_per_id=4, seed=1),
                      formats=("market", "attributes"))
    code = main(["train", "--task", "image", "--moe", "--root", str(tmp_path / "data"),
                 "--host-weights", str(path), "--epochs", "1"])
    assert code == 2 and not marker.exists()
    assert "host weights" in capsys.readouterr().err
