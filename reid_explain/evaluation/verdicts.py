"""Each figure of an evaluation beside random maps and the image-blind reference, with a
verdict.

A method's value alone says little: random maps and a map drawn without the image
(:mod:`.references`) are scored on the same pairs, and the method is compared with each by the
paired per-query difference and its 95 % percentile bootstrap interval over queries. The
verdict "beats" is True only when that interval lies wholly on the better side (above 0 where
larger is better, below 0 where smaller is); an interval that cannot be computed (no query with
both values finite) gives None, never True.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from .bootstrap import bootstrap_ci

#: the baseline variants of ``evaluate``, in the order they are shown
BASELINES: tuple[str, ...] = ("random", "reference")
#: the columns of a comparison table
COLUMNS = ["metric", "key", "higher_is_better", "n", "method", "method_low", "method_high",
           *[f"{b}{s}" for b in BASELINES for s in ("", "_diff", "_diff_low", "_diff_high",
                                                     "_beaten")]]


def ci_verdict(low: float, high: float, higher_is_better: bool) -> bool | None:
    """True when ``[low, high]`` (a difference's interval) lies wholly on the better side of 0,
    False when it does not, None when it is not finite (undetermined)."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return bool(low > 0) if higher_is_better else bool(high < 0)


def paired_comparison(values: pd.DataFrame, method: str, baseline: str,
                      higher_is_better: bool, seed: int = 0,
                      confidence: float = 0.95) -> dict[str, Any]:
    """``method - baseline`` over queries (``values``: one column per variant, a row per
    query), its interval and the verdict."""
    if method not in values or baseline not in values:
        return {}
    both = values[[method, baseline]].astype(float)
    both = both[np.isfinite(both).all(axis=1)]
    diff = (both[method] - both[baseline]).to_numpy()
    ci = bootstrap_ci(diff, seed=seed, confidence=confidence)
    base = float(both[baseline].mean()) if len(both) else float("nan")
    return {"value": base, "diff": ci.estimate, "diff_low": ci.low, "diff_high": ci.high,
            "beaten": ci_verdict(ci.low, ci.high, higher_is_better), "n": ci.n}


def compare(table: pd.DataFrame, method: str,
            orientation: Callable[[str, str], bool | None],
            baselines: Sequence[str] = BASELINES, seed: int = 0,
            confidence: float = 0.95) -> pd.DataFrame:
    """One row per figure (metric, key) of ``method`` in an evaluation's tidy ``table``: its
    mean and interval, and for each baseline present its mean, the paired difference with its
    interval, and ``<baseline>_beaten`` (True / False / None: undetermined).

    ``orientation(metric, key)`` says whether larger is better, or None for a value that is
    not a figure of the map (those are left out)."""
    rows = []
    table = table[table.method.isin([method, *baselines])]
    for (metric, key), part in table.groupby(["metric", "key"], sort=False):
        better = orientation(str(metric), str(key))
        if better is None:
            continue
        wide = part.pivot_table(index="query", columns="method", values="value",
                                aggfunc="first", dropna=False)
        if method not in wide:
            continue
        own = bootstrap_ci(wide[method].to_numpy(dtype=float), seed=seed,
                           confidence=confidence)
        row: dict[str, Any] = {"metric": metric, "key": key, "higher_is_better": better,
                               "n": own.n, "method": own.estimate, "method_low": own.low,
                               "method_high": own.high}
        for baseline in baselines:
            got = paired_comparison(wide, method, baseline, better, seed, confidence)
            if got:
                row |= {baseline: got["value"], f"{baseline}_diff": got["diff"],
                        f"{baseline}_diff_low": got["diff_low"],
                        f"{baseline}_diff_high": got["diff_high"],
                        f"{baseline}_beaten": got["beaten"]}
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def verdict_text(beaten: Any) -> str:
    """"yes" / "no" / "undetermined" for a ``<baseline>_beaten`` value."""
    if beaten is None or (isinstance(beaten, float) and math.isnan(beaten)):
        return "undetermined"
    return "yes" if bool(beaten) else "no"


def json_records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows as JSON-safe dicts: NaN and missing values become None."""
    from .._util.io import json_safe

    return [json_safe(record) for record in frame.to_dict(orient="records")]
