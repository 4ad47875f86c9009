"""Mutated files of every format the project reads load or fail with a documented project
error; nothing else escapes and no process dies (a seeded mutator, tests/fuzzing.py)."""

from __future__ import annotations

import pytest
from fuzzing import build_targets, run

XDIST_COST_S = 26  # seconds on 2 cores: pytest-xdist starts the longest files first

# each .mat case starts a child process (the crash-isolated reader, ~0.5 s); the benchmark
# benchmarks/fuzz_loaders.py runs thousands of each
CASES = {"side file": 300, ".mat": 60, "CUHK-PEDES JSON": 300, "attribute CSV": 300,
         "text-image checkpoint": 200, "zoo model": 200}


@pytest.mark.slow
def test_mutated_files_give_only_documented_errors(tmp_path):
    report = run(build_targets(tmp_path / "seeds"), CASES, seed=0, workdir=tmp_path / "cases")
    assert report.failures == [], "\n".join(report.failures[:20])
    for name, count in CASES.items():
        assert report.cases[name] == count
        errors = sum(n for (target, outcome), n in report.outcomes.items()
                     if target == name and outcome != "ok")
        assert errors > count // 10, f"{name}: the mutator hardly ever broke the file"


def test_mutated_market_file_names_parse_or_are_refused():
    import random

    from fuzzing import mutate_bytes

    from reid_explain.data.datasets import parse_market_name
    from reid_explain.errors import DataFormatError

    rng = random.Random(0)
    outcomes = {"ok": 0, "refused": 0}
    for _ in range(400):
        name = mutate_bytes(b"0001_c1s1_000151_00.jpg", rng).decode("latin-1")
        name = name.replace("/", "_").replace("\0", "_") or "x"
        try:
            pid, camid = parse_market_name(f"/data/bounding_box_test/{name}")
        except DataFormatError:
            outcomes["refused"] += 1
            continue
        outcomes["ok"] += 1
        assert (pid == -1 or 0 <= pid <= 10**6) and 0 <= camid <= 8, name
    assert outcomes["ok"] > 50 and outcomes["refused"] > 20
