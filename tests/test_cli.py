"""The command line: plugins listing and the demo end to end."""

from __future__ import annotations

import json

import pytest

from reid_explain.cli import main


def test_plugins_lists_builtins_with_what_they_provide(capsys):
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    for name in ("gradcam", "occlusion", "rollout", "attention_relevance", "torchreid",
                 "open_clip", "timm_vit", "module", "masking_drop"):
        assert name in text


@pytest.mark.slow
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["hosts"]) == {"torchreid-osnet_x0_25", "open_clip-vit", "timm-vit_tiny"}
    clip = summary["hosts"]["open_clip-vit"]
    assert {"gradcam", "rollout", "attention_relevance", "occlusion",
            "integrated_gradients"} <= set(clip["methods"])
    assert clip["text"] and clip["text"][0]["words"]
    assert "skipped" in summary["hosts"]["torchreid-osnet_x0_25"]["methods"]["rollout"]
    for host in summary["hosts"].values():
        for record in host["methods"].values():
            if "png" in record:
                assert (out / record["png"]).stat().st_size > 0
    assert "masking gap" in capsys.readouterr().out


def test_demo_unknown_method_fails_cleanly(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--methods", "nope"]) == 2
    assert "unknown attribution method 'nope'" in capsys.readouterr().err
    assert not out.exists()
