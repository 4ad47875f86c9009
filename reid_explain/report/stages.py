"""Stage times of a report, and a progress line on stderr as each stage starts and ends.

A report on real data runs for minutes; a user watching a terminal (or a CI log) should see
which stage it is in. Lines go to stderr so that stdout keeps the summary alone.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


class StageClock:
    """``with clock.stage("image retrieval"): ...`` records the stage's seconds in ``times``
    and says when it starts and how long it took."""

    def __init__(self, times: dict[str, float] | None = None, stream: TextIO | None = None,
                 enabled: bool = True) -> None:
        self.times = {} if times is None else times
        self.stream = stream
        self.enabled = enabled

    def _say(self, text: str) -> None:
        if self.enabled:
            stream = self.stream or sys.stderr
            print(f"reid-explain: {text}", file=stream, flush=True)

    @contextmanager
    def stage(self, name: str, detail: str = "") -> Iterator[None]:
        self._say(f"{name}{f' ({detail})' if detail else ''} ...")
        start = time.perf_counter()
        yield
        self.times[name] = round(time.perf_counter() - start, 1)
        self._say(f"{name} done in {self.times[name]:.1f} s")
