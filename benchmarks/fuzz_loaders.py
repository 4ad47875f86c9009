"""Fuzz every loader with the seeded mutator of tests/fuzzing.py and print the outcome counts.

    python benchmarks/fuzz_loaders.py --cases 2000 --mat-cases 500

Each case is one mutated copy of a valid file (byte-level, and structural for JSON). Allowed
outcomes: it loads, or a documented project error (DataFormatError / InputError). Anything else
is listed and makes the run exit 1. The ``.mat`` loader starts a child process per file (its C
reader can crash), so it gets its own, smaller count.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from fuzzing import build_targets, run  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=2000, help="cases per loader")
    parser.add_argument("--mat-cases", type=int, default=500, help="cases for the .mat loader")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        targets = build_targets(Path(tmp) / "seeds")
        cases = {t.name: args.mat_cases if t.name == ".mat" else args.cases for t in targets}
        start = time.perf_counter()
        report = run(targets, cases, args.seed, Path(tmp) / "cases")
        seconds = time.perf_counter() - start
    print(f"{'loader':24s} {'cases':>7s}  outcomes")
    for target in targets:
        outcomes = {o: n for (t, o), n in sorted(report.outcomes.items()) if t == target.name}
        print(f"{target.name:24s} {report.cases[target.name]:7d}  "
              + ", ".join(f"{o} {n}" for o, n in outcomes.items()))
    print(f"{sum(report.cases.values())} cases in {seconds:.0f} s; "
          f"{len(report.failures)} outside the error contract")
    for failure in report.failures[:20]:
        print("  " + failure)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
