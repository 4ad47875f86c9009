"""Percentile bootstrap confidence intervals over per-query values (numpy only, seeded).

Faithfulness gaps (top-region drop minus random-region drop) are per-query numbers whose
spread across queries is large; a bare mean hides whether the gap is distinguishable from zero.
Resampling the queries with replacement gives an interval for the data-set mean without
assuming normality. The same ``seed`` always gives the same interval, so reported numbers are
reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

__all__ = ["BootstrapCI", "bootstrap_ci"]

#: resampled values held at once (bounds memory for large query sets)
_MAX_BLOCK_VALUES = 4_000_000


@dataclass(frozen=True)
class BootstrapCI:
    """Point estimate on the full sample and the percentile interval ``[low, high]``."""

    estimate: float
    low: float
    high: float
    confidence: float
    n: int  # finite values used
    n_boot: int

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high


def bootstrap_ci(values: np.ndarray, statistic: Callable[..., np.ndarray] = np.mean,
                 n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> BootstrapCI:
    """Percentile bootstrap interval of ``statistic`` over the entries of ``values``.

    ``values`` is 1-D (one value per query); non-finite entries (queries where a value is
    undefined) are dropped first. ``statistic(array, axis=1)`` must reduce each resample row
    (numpy reductions do). Resamples are drawn from ``np.random.default_rng(seed)`` in fixed
    blocks, so the interval depends only on the finite values, ``n_boot``, ``confidence`` and
    ``seed``. With no finite value every field is NaN; with one value the interval is that value.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    n_boot = int(n_boot)
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    n = len(x)
    if n == 0:
        nan = float("nan")
        return BootstrapCI(nan, nan, nan, confidence, 0, n_boot)
    estimate = float(statistic(x[None], axis=1)[0])
    rng = np.random.default_rng(seed)
    block = max(1, min(n_boot, _MAX_BLOCK_VALUES // n))
    stats = np.empty(n_boot, dtype=np.float64)
    for start in range(0, n_boot, block):
        stop = min(start + block, n_boot)
        idx = rng.integers(0, n, size=(stop - start, n))
        stats[start:stop] = statistic(x[idx], axis=1)
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(stats, [alpha, 1.0 - alpha])
    return BootstrapCI(estimate, float(low), float(high), confidence, n, n_boot)
