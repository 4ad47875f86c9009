"""``reid-explain attributes``: run the attribute-importance study from files.

Outcomes come either from a per-query table (CSV/Parquet with ``pid``, ``ap``, ``hit`` and
optional ``delta_ap_<group>`` columns) or from saved features (``.npz`` with ``q_feats``,
``g_feats``, ``q_pids``, ``g_pids``, ``q_camids``, ``g_camids``), so any model can be audited.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from reid_explain.errors import DataFormatError, ReidExplainError

__all__ = ["attributes_main", "build_parser"]

_NPZ_KEYS = ("q_feats", "g_feats", "q_pids", "g_pids", "q_camids", "g_camids")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="reid-explain attributes",
        description="Which semantic attributes does the model's per-query accuracy depend on? "
                    "GLM (cluster-robust by identity), forest permutation importance, SHAP and "
                    "hypothesis tests (BH-FDR), ranked side by side with a consensus.")
    p.add_argument("--attributes", required=True,
                   help="attribute labels: market_attribute.mat, duke_attribute.mat, or a tidy "
                        ".csv/.parquet (split, pid, attribute, value)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--outcomes", help="per-query table (.csv/.parquet): pid, ap, hit "
                                           "[, delta_ap_<group> ...]")
    source.add_argument("--features", help=".npz with " + ", ".join(_NPZ_KEYS))
    p.add_argument("--schema", default=None, help="market1501 or dukemtmc (default: detected)")
    p.add_argument("--split", default=None,
                   help="attribute split of the query identities (e.g. test)")
    p.add_argument("--metric", default="cosine", choices=("cosine", "euclidean"),
                   help="distance for --features")
    p.add_argument("--missing", default="error", choices=("error", "drop"),
                   help="queries whose identity lacks a label: fail (default) or drop them")
    p.add_argument("--n-estimators", type=int, default=100, help="trees per forest")
    p.add_argument("--n-splits", type=int, default=5, help="identity-grouped folds")
    p.add_argument("--n-repeats", type=int, default=5, help="permutations per attribute")
    p.add_argument("--consensus", default="auto", choices=("auto", "responses", "ablation"),
                   help="ranking to call the consensus: from the AP/hit analyses, or from the "
                        "delta_ap_<group> ablation columns (auto: ablation when every attribute "
                        "has one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-identities", type=int, default=None,
                   help="fewest identities per attribute level for a confirmatory reading "
                        "(default: reid_explain.attributes.study.MIN_IDENTITIES); below it the "
                        "study is labelled exploratory")
    p.add_argument("--rank-bootstrap", type=int, default=20,
                   help="bootstrap draws of the identities for the rank intervals and tied "
                        "groups (each reruns the study with a lighter forest; 0: none)")
    p.add_argument("--jobs", type=int, default=1, help="parallel jobs for the forests")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    p.add_argument("--out", default="reid_explain_output/attributes", help="output directory")
    return p


def _read_outcomes(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataFormatError(f"{path}: outcome table not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path)
        return pd.read_csv(path)
    except (ValueError, OSError, ImportError) as exc:
        raise DataFormatError(f"{path}: cannot read the outcome table ({exc})") from None


def _outcomes_from_features(path: Path, metric: str) -> pd.DataFrame:
    import numpy as np

    from .outcomes import per_query_outcomes

    if not path.is_file():
        raise DataFormatError(f"{path}: feature file not found")
    try:
        data = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataFormatError(f"{path}: not a readable .npz ({exc})") from None
    missing = [k for k in _NPZ_KEYS if k not in data.files]
    if missing:
        raise DataFormatError(f"{path}: missing array(s) {missing}; found {data.files}")
    return per_query_outcomes(*(data[k] for k in _NPZ_KEYS), metric=metric)


def attributes_main(argv: list[str] | None = None) -> int:
    """Entry point of ``reid-explain attributes``; returns the exit status."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        from reid_explain.data.attributes import load_attributes

        from .rank_intervals import add_rank_intervals
        from .study import run_study

        attributes = load_attributes(args.attributes, args.schema)
        outcomes = (_read_outcomes(Path(args.outcomes)) if args.outcomes
                    else _outcomes_from_features(Path(args.features), args.metric))
        study = run_study(outcomes, attributes, args.schema, split=args.split,
                          missing=args.missing, consensus=args.consensus,
                          n_estimators=args.n_estimators,
                          n_splits=args.n_splits, n_repeats=args.n_repeats,
                          random_state=args.seed, n_jobs=args.jobs,
                          **({} if args.min_identities is None
                             else {"min_identities": args.min_identities}))
        if args.rank_bootstrap:
            add_rank_intervals(study, outcomes, attributes, n_boot=args.rank_bootstrap,
                               seed=args.seed)
        study.save(args.out, plots=not args.no_plots)
    except ReidExplainError as exc:
        print(f"reid-explain attributes: error: {exc}", file=sys.stderr)
        return 2
    shown = study.ranking[["consensus_rank", "attribute", "mean_rank"]]
    if study.rank_intervals is not None:
        by_name = study.rank_intervals.table.set_index("attribute")
        shown = shown.assign(rank_low=by_name.loc[shown["attribute"], "low"].to_numpy(),
                             rank_high=by_name.loc[shown["attribute"], "high"].to_numpy(),
                             tied_group=by_name.loc[shown["attribute"], "group"].to_numpy())
    if study.exploratory:
        print("EXPLORATORY: fewer than {} identities in a level of {}; the ranking is a lead, "
              "not a finding".format(study.config["min_identities"],
                                     ", ".join(f"{a} ({n})" for a, n in study.thin.items())))
    print(shown.to_string(index=False))
    if study.delta_ranking is not None:
        print(study.delta_ranking[["rank", "group", "mean", "ci_low", "ci_high"]]
              .to_string(index=False))
    print(f"{len(study.outcomes)} queries, {study.outcomes['pid'].nunique()} identities; "
          f"wrote {args.out}/table.csv, ranking.csv, summary.json"
          + ("" if args.no_plots else ", plots/*.png"))
    return 0


if __name__ == "__main__":
    sys.exit(attributes_main())
