"""How certain is the study's ranking? Identity-clustered bootstrap intervals of each rank.

A consensus ranking from 30 queries of 16 identities reads as certain as one from 3,000. The
unit of resampling is the identity, not the query: an identity's queries share its attributes
and much of its AP, so resampling queries would understate the spread (the same reason the
GLMs use identity-clustered standard errors). Each draw takes as many identities as the data
has, with replacement; a drawn identity brings all its queries and its attribute rows, under a
fresh id, so a twice-drawn identity counts as two clusters (the cluster bootstrap of Cameron,
Gelbach & Miller 2008). :func:`~.study.run_study` is rerun on each draw and the attribute's
consensus rank recorded; the interval is the percentile interval of those ranks.

**Tied groups.** Walking the point ranking from the top, an attribute joins the current group
while its interval overlaps the interval of every attribute already in the group (the group's
intervals share a point); otherwise it starts a new group. Attributes in one group cannot be
told apart at this sample size.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from reid_explain.errors import InputError, ReidExplainError

from .study import AttributeStudy, run_study

__all__ = ["LEAN_DRAWS", "RankIntervals", "add_rank_intervals", "identity_bootstrap_sample",
           "rank_intervals", "tied_groups"]

#: caps on each bootstrap draw's options (``add_rank_intervals``) over the study's own:
#: 25 trees, 3 folds, one permutation repeat take a seventh of the default study's time; the
#: forest's extra noise can only widen the intervals (more ties, never false certainty)
LEAN_DRAWS: dict = {"n_estimators": 25, "n_splits": 3, "n_repeats": 1}


@dataclass
class RankIntervals:
    """Per attribute (point-ranking order): the point rank, the bootstrap interval and the
    tied group; ``draws`` holds every successful draw's ranks (draws x attributes)."""

    table: pd.DataFrame
    draws: pd.DataFrame
    level: float
    n_boot: int
    #: draws whose study could not run (e.g. a resample with one level of an attribute), why
    failed: list[str] = field(default_factory=list)
    #: the ``run_study`` options of each draw, where they differ from the point study's
    draw_options: dict[str, Any] = field(default_factory=dict)

    @property
    def groups(self) -> list[list[str]]:
        """Tied groups, best first."""
        return [list(g["attribute"]) for _, g in self.table.groupby("group", sort=True)]

    def to_json(self) -> dict[str, Any]:
        lean = {k: v for k, v in self.draw_options.items()
                if k in ("n_estimators", "n_splits", "n_repeats")}
        return {"level": self.level, "n_boot": self.n_boot, "draws_used": len(self.draws),
                "draw_forest": lean,
                "failed": len(self.failed), "failed_reasons": sorted(set(self.failed)),
                "groups": self.groups,
                "attributes": [{"attribute": r.attribute, "rank": int(r.rank),
                                "low": float(r.low), "high": float(r.high),
                                "group": int(r.group)} for r in self.table.itertuples()]}


def identity_bootstrap_sample(outcomes: pd.DataFrame, attributes: pd.DataFrame,
                              rng: np.random.Generator) -> tuple[pd.DataFrame, pd.DataFrame]:
    """One cluster-bootstrap draw: identities with replacement, each under a fresh id, with
    all of its queries and attribute rows (``attributes`` in the tidy ``pid``-keyed layout)."""
    pids = np.unique(outcomes["pid"].to_numpy())
    drawn = rng.choice(pids, size=len(pids), replace=True)
    by_pid = dict(tuple(outcomes.groupby("pid", sort=False)))
    labels = dict(tuple(attributes.groupby("pid", sort=False)))
    out_parts, attr_parts = [], []
    for k, pid in enumerate(drawn, start=1):
        out_parts.append(by_pid[pid].assign(pid=k))
        if pid in labels:
            attr_parts.append(labels[pid].assign(pid=k))
    sample = pd.concat(out_parts, ignore_index=True)
    if "query" in sample:
        sample["query"] = np.arange(len(sample))
    table = pd.concat(attr_parts, ignore_index=True) if attr_parts else attributes.iloc[:0]
    table.attrs.update(attributes.attrs)
    return sample, table


def tied_groups(table: pd.DataFrame) -> list[int]:
    """Group number (1 = best) of each row of ``table`` (point order; ``low``/``high``)."""
    groups, current, group_high = [], 0, -np.inf
    group_low = np.inf
    for low, high in zip(table["low"], table["high"], strict=True):
        if current == 0 or low > group_high or high < group_low:
            current += 1
            group_low, group_high = low, high
        else:
            group_low, group_high = max(group_low, low), min(group_high, high)
        groups.append(current)
    return groups


def rank_intervals(outcomes: pd.DataFrame, attributes: pd.DataFrame, *,
                   study: AttributeStudy | None = None, n_boot: int = 50, level: float = 0.95,
                   seed: int = 0, **study_options: Any) -> RankIntervals:
    """Bootstrap intervals of each attribute's consensus rank, resampling identities.

    ``study_options`` go to :func:`~.study.run_study` for the point study (unless ``study``
    is given, computed with the same options) and for every draw. Draws whose study cannot
    run are recorded in ``failed``; more than half failing is an error.
    """
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1), got {level}")
    if n_boot < 2:
        raise InputError(f"n_boot must be at least 2, got {n_boot}")
    if "pid" not in outcomes or "pid" not in attributes:
        raise InputError("rank_intervals: outcomes and attributes need a 'pid' column (the "
                         "tidy attribute layout)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the point study's notes say it once; draws repeat it
        point = study if study is not None else run_study(outcomes, attributes, **study_options)
        names = list(point.ranking["attribute"])
        rng = np.random.default_rng(seed)
        rows, failed = [], []
        for _ in range(n_boot):
            sample, table = identity_bootstrap_sample(outcomes, attributes, rng)
            try:
                ranking = run_study(sample, table, **study_options).ranking
            except (ReidExplainError, np.linalg.LinAlgError, ValueError) as exc:
                failed.append(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
                continue
            ranks = dict(zip(ranking["attribute"], ranking["consensus_rank"], strict=True))
            # an attribute a draw could not analyse (one level left) ranks last
            rows.append([ranks.get(a, len(names)) for a in names])
    if len(rows) < max(2, n_boot // 2):
        raise InputError(f"rank_intervals: only {len(rows)} of {n_boot} bootstrap draws could "
                         f"be analysed ({sorted(set(failed))[:3]})")
    draws = pd.DataFrame(rows, columns=names)
    tail = (1 - level) / 2
    table = pd.DataFrame({"attribute": names,
                          "rank": point.ranking["consensus_rank"].to_numpy(),
                          "low": draws.quantile(tail).to_numpy(),
                          "high": draws.quantile(1 - tail).to_numpy(),
                          "median": draws.median().to_numpy()})
    table["group"] = tied_groups(table)
    return RankIntervals(table=table, draws=draws, level=level, n_boot=n_boot, failed=failed)


def add_rank_intervals(study: AttributeStudy, outcomes: pd.DataFrame, attributes: pd.DataFrame,
                       n_boot: int = 20, seed: int = 0, level: float = 0.95,
                       draw_options: dict[str, Any] | None = LEAN_DRAWS) -> RankIntervals:
    """:func:`rank_intervals` for a finished ``study``, kept on it (``study.rank_intervals``,
    written by its ``save`` and ``summary()``): ``outcomes`` and ``attributes`` as given to
    ``run_study`` (only the identities it analysed are resampled), each draw rerun with the
    study's own options capped by ``draw_options`` (default :data:`LEAN_DRAWS`; None: the
    study's own)."""
    used = outcomes[outcomes["pid"].isin(study.outcomes["pid"].unique())]
    # a draw is never heavier than the study itself
    options = study.options | {k: min(v, study.options.get(k, v))
                               for k, v in (draw_options or {}).items()}
    study.rank_intervals = rank_intervals(used, attributes, study=study, n_boot=n_boot,
                                          seed=seed, level=level, **options)
    study.rank_intervals.draw_options = options
    return study.rank_intervals
