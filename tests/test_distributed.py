"""``reid-explain evaluate`` sharded by ``torchrun`` writes what one process writes.

Two CPU processes (gloo) share the gallery chunks and query batches; the per-query table and the
summaries must equal the single-process run's exactly (byte for byte), with only the timing in
``summary.json`` allowed to differ. Both runs use one thread per process (torchrun's default),
so that no kernel's reduction order differs between them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reid_explain.cli import main

XDIST_COST_S = 35  # seconds on 2 cores: pytest-xdist starts the longest files first

pytestmark = pytest.mark.slow

BASE = ["evaluate", "--model", "zoo:osnet-synthpedes", "--height", "128", "--width", "64",
        "--batch-size", "2", "--no-progress"]
ARGS = [*BASE, "--max-queries", "10", "--metrics", "counterfactual_masking", "deletion"]


@pytest.fixture(scope="module")
def synth_data(tmp_path_factory) -> Path:
    """30 identities: 83 gallery images (two gallery chunks of 64) and 44 queries."""
    root = tmp_path_factory.mktemp("synth") / "data"
    assert main(["synth", "--out", str(root), "--ids", "30", "--seed", "2",
                 "--format", "market,masks"]) == 0
    return root


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _run(command: list[str]) -> subprocess.CompletedProcess:
    run = subprocess.run(command, capture_output=True, text=True, timeout=900, env=_env())
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def _without_timing(path: Path) -> dict:
    record = json.loads(path.read_text())
    timing = record["info"].pop("timing")
    return record | {"timing_keys": sorted(timing)}


def test_two_torchrun_processes_write_the_single_process_results(synth_data, tmp_path):
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    _run([sys.executable, "-m", "reid_explain", *ARGS, "--data", str(synth_data),
          "--out", str(single)])
    run = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node", "2", "-m", "reid_explain", *ARGS, "--data",
                str(synth_data), "--out", str(sharded)])
    assert "on 2 processes" in run.stderr
    for name in ("per_query.csv", "summary.csv"):
        assert (sharded / name).read_bytes() == (single / name).read_bytes(), name
    assert _without_timing(sharded / "summary.json") == _without_timing(single / "summary.json")
    timing = json.loads((sharded / "summary.json").read_text())["info"]["timing"]
    assert timing["world_size"] == 2 and timing["queries_computed"] == 10
    rows = (single / "per_query.csv").read_text().splitlines()
    assert len(rows) > 20  # both metrics, method and random maps, for the queries kept
    assert not Path(f"{sharded}.partial").exists()


def test_feature_cache_is_reused_by_a_second_cli_run(synth_data, tmp_path):
    cache = tmp_path / "features"
    first, second = tmp_path / "first", tmp_path / "second"
    common = [sys.executable, "-m", "reid_explain", *BASE, "--max-queries", "4",
              "--data", str(synth_data), "--feature-cache", str(cache)]
    one = _run([*common, "--out", str(first)])
    two = _run([*common, "--out", str(second)])
    assert "embedding gallery: 83 images" in one.stderr
    assert "embedding gallery" not in two.stderr and "gallery features:" in two.stderr
    assert len(list(cache.glob("gallery-*.safetensors"))) == 1
    for name in ("per_query.csv", "summary.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
