"""The command line: plugins listing and the demo's input checks (the demo end to end is in
test_report.py)."""

from __future__ import annotations

from reid_explain.cli import main


def test_plugins_lists_builtins_with_what_they_provide(capsys):
    assert main(["plugins"]) == 0
    text = capsys.readouterr().out
    for name in ("gradcam", "occlusion", "rollout", "attention_relevance", "torchreid",
                 "open_clip", "timm_vit", "module", "masking_drop"):
        assert name in text


def test_demo_unknown_method_fails_cleanly(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--methods", "nope"]) == 2
    assert "unknown attribution method 'nope'" in capsys.readouterr().err
    assert not out.exists()
