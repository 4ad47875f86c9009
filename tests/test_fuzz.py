"""Mutated files of every format the project reads load or fail with a documented project
error; nothing else escapes and no process dies (a seeded mutator, tests/fuzzing.py)."""

from __future__ import annotations

import pytest
from fuzzing import build_targets, run

CASES = {"side file": 300, ".mat": 120, "CUHK-PEDES JSON": 300, "attribute CSV": 300,
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
