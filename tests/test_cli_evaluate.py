"""``reid-explain evaluate`` checks every input before any slow work, and says where it is.

The checks are proved to come first by order, not by timing: each bad input is paired with a
host spec that cannot be built (``timm:no_such_model``), so an error about the input (and no
"building host" line) shows that nothing was built; the output folder is never created.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import images, make_osnet

from reid_explain import explainify
from reid_explain.cli import main
from reid_explain.evaluation.protocol import ReidEvalSet

UNBUILDABLE = "timm:no_such_model"


def market_folder(root: Path) -> Path:
    """A folder that looks like Market-1501 to the checks (they read no image)."""
    for folder in ("query", "bounding_box_test"):
        (root / folder).mkdir(parents=True)
        (root / folder / "0001_c1s1_000151_00.jpg").write_bytes(b"")
    return root


def test_method_typo_fails_before_any_host_is_built(tmp_path):
    data, out = market_folder(tmp_path / "data"), tmp_path / "out"
    typo = "gradcm\u0430"  # Cyrillic a: looks right, is not registered
    run = subprocess.run([sys.executable, "-m", "reid_explain", "evaluate", "--method", typo,
                          "--data", str(data), "--model", UNBUILDABLE, "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1, run.stderr  # one line, no traceback, no stage line
    assert lines[0].startswith("reid-explain evaluate: error: --method: unknown attribution")
    assert repr(typo) in lines[0]
    for known in ("gradcam", "integrated_gradients", "occlusion"):
        assert known in lines[0]
    assert not out.exists() and not Path(f"{out}.partial").exists()


BAD_INPUTS = [
    (["--metrics", "counterfactual_masking", "delition"], "--metrics: unknown metric 'delition'",
     "deletion"),
    (["--masker", "blurr"], "--masker: unknown masker 'blurr'", "blur"),
    (["--method", "token_ig"], "--method 'token_ig' explains text inputs", "gradcam"),
    (["--batch-size", "0"], "--batch-size must be a positive integer, got 0", None),
    (["--height", "-3"], "--height must be a positive integer", None),
    (["--max-queries", "0"], "--max-queries must be a positive integer", None),
    (["--model", "tim:vit"], "model spec 'tim:vit' must be family:name", "torchreid"),
    (["--model", "zoo:osnet-synthpedez"], "no zoo model 'osnet-synthpedez'", "osnet-synthpedes"),
    (["--weights", "{tmp}/missing.pt"], "weights file", "does not exist"),
    (["--data", "{tmp}/nowhere"], "--data {tmp}/nowhere: no such folder", None),
    (["--data", "{tmp}"], "no Market-1501 folders", "reid-explain synth"),
    (["--out", "{tmp}/file.txt"], "--out {tmp}/file.txt: exists and is not a folder", None),
    (["--out", "{tmp}/file.txt/sub"], "is a file, not a folder", None),
]


@pytest.mark.parametrize(("extra", "message", "also"), BAD_INPUTS,
                         ids=[" ".join(b[0]) for b in BAD_INPUTS])
def test_every_input_is_checked_before_the_host(tmp_path, capsys, extra, message, also):
    data = market_folder(tmp_path / "data")
    (tmp_path / "file.txt").write_text("not a folder")
    extra = [e.format(tmp=tmp_path) for e in extra]
    argv = ["evaluate", "--data", str(data), "--model", UNBUILDABLE,
            "--out", str(tmp_path / "out"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "building host" not in err
    assert message.format(tmp=tmp_path) in err
    if also is not None:
        assert also in err
    assert not (tmp_path / "out").exists()


def test_a_synthpedes_export_without_masks_is_refused_up_front(tmp_path, capsys):
    data = market_folder(tmp_path / "data")
    (data / "synthpedes").mkdir()
    (data / "synthpedes" / "annotations.json").write_text("{}")
    assert main(["evaluate", "--data", str(data), "--model", UNBUILDABLE,
                 "--out", str(tmp_path / "out")]) == 2
    assert "masks.npz is missing" in capsys.readouterr().err.replace(str(data), "")


def test_valid_inputs_pass_the_checks_and_reach_the_host(tmp_path, capsys):
    """The same command with good inputs gets past the checks: the unbuildable host is then
    what fails, after its stage line."""
    data = market_folder(tmp_path / "data")
    assert main(["evaluate", "--data", str(data), "--model", UNBUILDABLE,
                 "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "reid-explain evaluate: building host timm:no_such_model" in err
    assert "no_such_model" in err.splitlines()[-1]


def test_evaluate_logs_each_stage_and_each_batch_when_bars_are_off():
    pids = np.array([1, 1, 2, 3])
    data = ReidEvalSet(query=images(4, (128, 64), seed=0), query_pids=pids,
                       query_camids=np.array([0, 1, 0, 0]),
                       gallery=images(6, (128, 64), seed=1),
                       gallery_pids=np.array([1, 1, 2, 2, 3, 4]),
                       gallery_camids=np.array([1, 2, 1, 0, 0, 1]))
    lines: list[str] = []
    with explainify(make_osnet()) as exp:
        exp.evaluate(data, method="gradcam", metrics=["masking_drop"], batch_size=3,
                     random_baseline=False, progress=False, log=lines.append)
    assert lines == ["embedding gallery: 6 images",
                     "explaining batch 1/2 (queries 0-2, gradcam + 1 metric(s))",
                     "explaining batch 2/2 (queries 3-3, gradcam + 1 metric(s))"]


@pytest.mark.slow
def test_cli_prints_one_line_per_stage_when_stderr_is_not_a_terminal(tmp_path):
    assert main(["synth", "--out", str(tmp_path / "data"), "--ids", "6", "--seed", "2",
                 "--format", "market,masks"]) == 0
    run = subprocess.run([sys.executable, "-m", "reid_explain", "evaluate", "--data",
                          str(tmp_path / "data"), "--model", "torchreid:osnet_x0_25",
                          "--height", "64", "--width", "32", "--max-queries", "4",
                          "--batch-size", "2", "--no-random-baseline", "--score", "cosine",
                          "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    stages = [line.removeprefix("reid-explain evaluate: ")
              for line in run.stderr.splitlines() if line.startswith("reid-explain evaluate:")]
    assert stages == ["building host torchreid:osnet_x0_25",
                      f"loading data {tmp_path / 'data'}",
                      "data: 9 queries, 16 gallery images",
                      "embedding gallery: 16 images",
                      "explaining batch 1/2 (queries 0-1, gradcam + 1 metric(s))",
                      "explaining batch 2/2 (queries 2-3, gradcam + 1 metric(s))",
                      f"writing {tmp_path / 'out'}"]
    assert (tmp_path / "out" / "summary.csv").is_file()
    info = json.loads((tmp_path / "out" / "summary.json").read_text())["info"]
    assert info["score"] == "cosine"  # --score reaches evaluate (the default is "centred")
