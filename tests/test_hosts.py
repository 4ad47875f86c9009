"""Building hosts from local checkpoint files in each family's own format."""

from __future__ import annotations

import json

import pytest
import torch

from reid_explain.errors import InputError
from reid_explain.explain.hosts import build_host


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_torchreid_checkpoint_in_torchreid_format(tmp_path, zipfile):
    """Both of torch.save's formats: checkpoints from torch < 1.6 (and torchreid's own released
    models) are the legacy, non-zip one."""
    import torchreid

    torch.manual_seed(1)
    trained = torchreid.models.build_model("osnet_x0_25", num_classes=1, pretrained=False)
    path = tmp_path / "model.pth.tar-60"
    # torchreid.utils.save_checkpoint's layout: a dict with 'state_dict' (DataParallel prefix)
    torch.save({"state_dict": {f"module.{k}": v for k, v in trained.state_dict().items()},
                "epoch": 60, "rank1": 0.5}, path, _use_new_zipfile_serialization=zipfile)
    assert (path.read_bytes()[:2] == b"PK") == zipfile
    loaded = build_host("torchreid:osnet_x0_25", path)
    _same_weights(trained, loaded)
    assert not loaded.training


def test_open_clip_pretrained_from_a_local_file(tmp_path):
    import open_clip

    config = {"embed_dim": 32,
              "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32,
                             "patch_size": 16},
              "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64,
                           "heads": 2, "layers": 2}}
    (tmp_path / "reid-explain-test-tiny.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "reid-explain-test-tiny.json")
    torch.manual_seed(2)
    trained = open_clip.create_model("reid-explain-test-tiny", force_image_size=(64, 32))
    path = tmp_path / "tiny.pt"
    torch.save(trained.state_dict(), path)
    loaded = build_host("open_clip:reid-explain-test-tiny", path, image_size=(64, 32))
    _same_weights(trained, loaded)
    assert loaded.visual.grid_size == (4, 2)


def test_timm_pretrained_from_a_local_file(tmp_path):
    import timm

    torch.manual_seed(3)
    trained = timm.create_model("vit_tiny_patch16_224", num_classes=0, img_size=(64, 32))
    path = tmp_path / "vit.pth"
    torch.save(trained.state_dict(), path)
    loaded = build_host("timm:vit_tiny_patch16_224", path, image_size=(64, 32))
    _same_weights(trained, loaded)


def test_bad_specs_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="must be family:name"):
        build_host("osnet_x1_0")
    with pytest.raises(InputError, match="does not exist"):
        build_host("torchreid:osnet_x0_25", tmp_path / "missing.pth")
    with pytest.raises(InputError, match="torchreid has no model 'nonet'"):
        build_host("torchreid:nonet")
    with pytest.raises(InputError, match="open_clip has no model config"):
        build_host("open_clip:no-such-config")


def test_native_image_size_is_the_size_the_spec_records():
    """Commands read data at the size a zoo model was trained at unless told otherwise; specs
    that record no size (a user's torchreid, open_clip or timm weights) get None."""
    from reid_explain.explain.hosts import load_host, native_image_size
    from reid_explain.zoo.registry import ZOO_DATA, spec

    assert native_image_size("zoo:osnet-synthpedes") == (ZOO_DATA["height"], ZOO_DATA["width"])
    assert native_image_size("zoo:clip-synthpedes") == tuple(
        spec("clip-synthpedes").architecture["image_size"])
    assert native_image_size("torchreid:osnet_x0_25") is None
    # the CLIP's position embeddings admit only its trained size; OSNet pools any size
    assert load_host("zoo:clip-synthpedes").fixed_size
    assert not load_host("zoo:osnet-synthpedes").fixed_size
    assert not load_host("torchreid:osnet_x0_25").fixed_size
