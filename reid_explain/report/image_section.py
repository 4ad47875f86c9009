"""The image-ReID part of a report: retrieval, maps of every method, faithfulness beside the
random-map baseline, deletion/insertion curves, the model-randomisation check, and the
attribute study of the model's per-query outcomes.

Works on any :class:`~reid_explain.evaluation.protocol.ReidEvalSet` (a user's Market-1501
folder, or SynthPedes with part masks, which adds grounding scores against the truth).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ..evaluation.bootstrap import bootstrap_ci
from ..evaluation.protocol import ImageSource, ReidEvalSet, evaluate
from ..plugin_api import manager as plugin_manager
from . import figures
from .html import Section

if TYPE_CHECKING:
    from ..plugin_api.interfaces import ExplainerLike

#: options that keep the slower attributions affordable on a CPU
FAST_OPTIONS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"n_steps": 16, "internal_batch_size": 64},
    "occlusion": {"perturbations_per_eval": 32}}
#: the faithfulness metrics of the report, and the grounding one where masks exist
FAITHFULNESS = ("counterfactual_masking", "deletion", "insertion")
GROUNDING = ("energy_pointing_game", "pointing_game", "mask_iou")
#: the figures shown, in order: (metric, key, label); each beside random maps and the
#: image-blind reference, with a verdict
FIGURES: tuple[tuple[str, str, str], ...] = (
    ("counterfactual_masking", "gap", "counterfactual gap"),
    ("counterfactual_masking", "top_drop", "top-20% drop"),
    ("counterfactual_masking", "bottom_drop", "bottom-20% drop ↓"),
    ("deletion", "query_auc", "deletion AUC ↓"),
    ("insertion", "query_auc", "insertion AUC"),
    ("energy_pointing_game", "person_energy", "person energy"),
    ("pointing_game", "person_pointing", "pointing"),
    ("mask_iou", "person_iou", "person IoU"))
#: the curves perturb the query image only: the report plots and tables the query side
METRIC_OPTIONS = {"deletion": {"side": "query"}, "insertion": {"side": "query"}}


def display_images(explainer: ExplainerLike, images: torch.Tensor) -> np.ndarray:
    """Normalised (N, 3, H, W) tensors back to uint8 (N, H, W, 3) for figures."""
    mean = torch.tensor(explainer.adapter.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(explainer.adapter.pixel_std).view(1, 3, 1, 1)
    x = (images.detach().cpu().float() * std + mean).clamp(0, 1)
    return (x.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def image_methods(explainer: ExplainerLike, methods: Sequence[str] | None) -> list[str]:
    """The requested image attributions (default: every registered one the host supports,
    except those offered by name only, ``by_default = False``); unknown names fail here,
    before any work."""
    entries = plugin_manager.registry("attributions")
    if methods:
        for name in methods:
            plugin_manager.get("attributions", name)
        names = list(methods)
    else:
        names = sorted(n for n, e in entries.items()
                       if e.obj.modality == "image" and e.obj.by_default)
    caps = set(explainer.adapter.capabilities)
    return [n for n in names if set(entries[n].obj.requires) <= caps]


def paired_difference(table: pd.DataFrame, metric: str, key: str, method: str,
                      seed: int = 0) -> dict[str, float]:
    """Mean of ``method - random`` per query for one metric value, with a bootstrap 95% CI."""
    rows = table[(table.metric == metric) & (table.key == key)]
    wide = rows.pivot_table(index="query", columns="method", values="value", aggfunc="first")
    if method not in wide or "random" not in wide:
        return {}
    both = wide[[method, "random"]].dropna()
    diff = (both[method] - both["random"]).to_numpy()
    ci = bootstrap_ci(diff, seed=seed)
    m, r = bootstrap_ci(both[method].to_numpy(), seed=seed), bootstrap_ci(
        both["random"].to_numpy(), seed=seed)
    return {"method": m.estimate, "method_low": m.low, "method_high": m.high,
            "random": r.estimate, "random_low": r.low, "random_high": r.high,
            "diff": ci.estimate, "diff_low": ci.low, "diff_high": ci.high, "n": int(len(diff))}


def _curve(table: pd.DataFrame, metric: str, method: str) -> tuple[np.ndarray, np.ndarray]:
    rows = table[(table.metric == metric) & (table.method == method)
                 & table.key.str.startswith("query_curve_")]
    means = rows.groupby("key")["value"].mean()
    x = np.array([float(k.rsplit("_", 1)[1]) for k in means.index])
    order = np.argsort(x)
    return x[order], means.to_numpy()[order]


def retrieval_part(explainer: ExplainerLike, data: ReidEvalSet, out: Path, section: Section,
                   n_show: int = 6, top_k: int = 5) -> dict[str, Any]:
    """R@k/mAP of the model on ``data`` and a figure of ranked lists with match marks."""
    from ..attributes.outcomes import per_query_outcomes
    from ..evaluation.retrieval import image_reid_metrics

    query, gallery = ImageSource(data.query, "query"), ImageSource(data.gallery, "gallery")
    q_emb = torch.cat([explainer.embed(query.get(range(s, min(s + 128, len(query)))))
                       for s in range(0, len(query), 128)])
    g_emb = torch.cat([explainer.embed(gallery.get(range(s, min(s + 128, len(gallery)))))
                       for s in range(0, len(gallery), 128)])
    result = image_reid_metrics(q_emb, g_emb, data.query_pids, data.gallery_pids,
                                data.query_camids, data.gallery_camids)
    cmc = result["cmc"]
    metrics = {"R1": 100 * float(cmc[0]), "R5": 100 * float(cmc[min(4, len(cmc) - 1)]),
               "R10": 100 * float(cmc[min(9, len(cmc) - 1)]), "mAP": 100 * float(result["mAP"]),
               "mINP": 100 * float(result["mINP"]), "queries": len(query),
               "gallery": len(gallery)}
    sims = q_emb @ g_emb.T
    # Market-1501 rule: same identity on the same camera is not shown as a retrieval
    junk = torch.as_tensor((data.query_pids[:, None] == data.gallery_pids[None])
                           & (data.query_camids[:, None] == data.gallery_camids[None]))
    sims = sims.masked_fill(junk, float("-inf"))
    shown = list(range(min(n_show, len(query))))
    top = sims[shown].topk(min(top_k, len(gallery)), dim=1)
    matches = data.gallery_pids[top.indices.numpy()] == data.query_pids[shown][:, None]
    q_img = display_images(explainer, query.get(shown))
    g_img = [display_images(explainer, gallery.get(row.tolist())) for row in top.indices]
    fig = figures.ranked_lists(q_img, g_img, matches, top.values.numpy(),
                               out / "img" / "image_retrieval.png",
                               titles=[f"query pid {data.query_pids[i]}" for i in shown])
    section.kpis([("R@1", f"{metrics['R1']:.1f}%"), ("R@5", f"{metrics['R5']:.1f}%"),
                  ("mAP", f"{metrics['mAP']:.1f}%"), ("queries", str(len(query))),
                  ("gallery", str(len(gallery)))])
    section.figure(fig, f"Top-{top_k} gallery images of {len(shown)} queries (green: same "
                        "identity, red: another person; number: cosine similarity). Same-"
                        "camera images of the query's identity are left out, as in the "
                        "Market-1501 protocol.", out)
    outcomes = per_query_outcomes(q_emb, g_emb, data.query_pids, data.gallery_pids,
                                  data.query_camids, data.gallery_camids)
    return {"retrieval": metrics, "outcomes": outcomes, "features": (q_emb, g_emb)}


def _same_pairs(table: pd.DataFrame, other: pd.DataFrame) -> bool:
    def pairs(t: pd.DataFrame) -> set[tuple[int, int]]:
        return set(map(tuple, t[["query", "match"]].drop_duplicates().to_numpy().tolist()))

    return pairs(table) == pairs(other)


def explanation_part(explainer: ExplainerLike, data: ReidEvalSet, methods: Sequence[str],
                     out: Path, section: Section, n_queries: int, n_show: int = 4,
                     seed: int = 0, batch_size: int = 16) -> dict[str, Any]:
    """Maps of every method on both images, then each method scored beside random maps and
    the image-blind reference. Neither depends on the method (random maps are drawn on the
    host's patch grid from a generator seeded per batch, the reference is image-blind, and the
    pairs are the embeddings' true matches), so both are scored once, with the first method,
    and compared with every method on the same pairs."""
    import tempfile

    from ..evaluation.protocol import metric_orientation
    from ..evaluation.verdicts import compare

    has_masks = data.query_masks is not None
    metrics = list(FAITHFULNESS) + (list(GROUNDING) if has_masks else [])
    results, seconds = {}, {}
    # the gallery is embedded once, not once per method (evaluate's feature cache)
    with tempfile.TemporaryDirectory(prefix="reid_explain_gallery_") as features:
        for k, method in enumerate(methods):
            start = time.perf_counter()
            results[method] = evaluate(explainer, data, method=method, metrics=metrics,
                                       max_queries=n_queries, seed=seed, progress=False,
                                       batch_size=batch_size, metric_options=METRIC_OPTIONS,
                                       method_options=FAST_OPTIONS.get(method),
                                       reference="auto" if k == 0 else None,
                                       random_baseline=k == 0, feature_cache=features)
            seconds[method] = time.perf_counter() - start
    first_result = results[methods[0]]
    shared_rows = first_result.table[first_result.table.method.isin(("random", "reference"))]
    for method in methods[1:]:
        result = results[method]
        if not _same_pairs(result.table, first_result.table):
            raise RuntimeError(f"{method!r} was scored on other pairs than {methods[0]!r}; "
                               "the random and reference rows cannot be shared")
        result.table = pd.concat([result.table, shared_rows], ignore_index=True)
        result.comparison = compare(result.table, method, metric_orientation(METRIC_OPTIONS),
                                    seed=seed)
        result.info["reference"] = first_result.info["reference"]
    # maps of the first queries against their true matches, every method, both sides
    first = results[methods[0]].table
    pairs = (first[["query", "match"]].drop_duplicates().head(n_show).to_numpy())
    query, gallery = ImageSource(data.query, "query"), ImageSource(data.gallery, "gallery")
    q_imgs, g_imgs = query.get(pairs[:, 0].tolist()), gallery.get(pairs[:, 1].tolist())
    maps: dict[str, Any] = {}
    for method in methods:
        expl = explainer.explain(q_imgs, g_imgs, method=method,
                                 pairs=[(i, i) for i in range(len(pairs))],
                                 centre=results[methods[0]].centre,
                                 **FAST_OPTIONS.get(method, {}))
        maps[method] = (expl.query.upsampled().numpy(), expl.gallery.upsampled().numpy(),
                        expl.scores.numpy())
    q_show, g_show = display_images(explainer, q_imgs), display_images(explainer, g_imgs)
    rows = []
    for i, (q, g) in enumerate(pairs):
        q_masks = data.query_masks[q].numpy() if has_masks else None
        score = maps[methods[0]][2][i]
        rows.append({"label": f"query {q} (pid {data.query_pids[q]})", "image": q_show[i],
                     "masks": q_masks, "maps": {m: maps[m][0][i] for m in methods}})
        g_masks = None if data.gallery_masks is None else data.gallery_masks[g].numpy()
        rows.append({"label": f"match {g}, cos {score:.2f}", "image": g_show[i],
                     "masks": g_masks, "maps": {m: maps[m][1][i] for m in methods}})
    fig = figures.map_grid(rows, methods, out / "img" / "image_maps.png",
                           signed=figures.signed_methods(methods))
    section.heading("Maps of every method")
    section.figure(fig, "Each query (odd rows) and its highest-ranked true match (even rows): "
                        "the image, its ground-truth parts (where the data has them), then "
                        "each method's map of the pair's score: its cosine minus each "
                        "image's mean cosine with the gallery (the same ranking, without "
                        "what every gallery image shares).", out)
    # faithfulness and grounding, each beside the random-map baseline
    summary: dict[str, Any] = {"methods": {}, "seconds": seconds,
                               "reference": first_result.info["reference"]}
    rows_table, gap_bars, energy_bars = [], [], []
    for method in methods:
        table = results[method].table
        gap = paired_difference(table, "counterfactual_masking", "gap", method, seed)
        record: dict[str, Any] = {"gap": gap, "seconds": round(seconds[method], 2),
                                  "figures": figure_records(results[method].comparison)}
        s = results[method].summary
        drops = s[(s.metric == "counterfactual_masking") & (s.method == method)]
        record["drops"] = {key: float(drops[drops.key == key].value.iloc[0])
                           for key in ("top_drop", "random_drop", "bottom_drop")
                           if (drops.key == key).any()}
        for metric in ("deletion", "insertion"):
            auc = s[(s.metric == metric) & (s.key == "query_auc")]
            record[f"{metric}_auc"] = {r.method: float(r.value) for r in auc.itertuples()}
        if has_masks:
            record["energy"] = paired_difference(table, "energy_pointing_game",
                                                 "person_energy", method, seed)
            record["pointing"] = paired_difference(table, "pointing_game", "person_pointing",
                                                   method, seed)
        summary["methods"][method] = record
        row = {"method": method, **{f"{k.split('_')[0]} 20% masked: drop": v
                                    for k, v in record["drops"].items()},
               "gap": gap.get("method"), "gap (random maps)": gap.get("random"),
               "gap 95% CI": f"[{gap.get('method_low', float('nan')):.3f}, "
                             f"{gap.get('method_high', float('nan')):.3f}]",
               "deletion AUC ↓": record["deletion_auc"].get(method),
               "insertion AUC ↑": record["insertion_auc"].get(method)}
        if has_masks:
            e = record["energy"]
            row.update({"person energy": e.get("method"), "energy (random)": e.get("random"),
                        "energy − random, 95% CI": f"{e.get('diff', float('nan')):+.3f} "
                        f"[{e.get('diff_low', float('nan')):+.3f}, "
                        f"{e.get('diff_high', float('nan')):+.3f}]",
                        "pointing": record["pointing"].get("method")})
        row["seconds"] = round(seconds[method], 1)
        rows_table.append(row)
        gap_bars.append({"label": method, "value": gap["method"], "low": gap["method_low"],
                         "high": gap["method_high"]})
        if has_masks:
            energy_bars.append({"label": method, "value": record["energy"]["method"],
                                "low": record["energy"]["method_low"],
                                "high": record["energy"]["method_high"]})
    first_gap = summary["methods"][methods[0]]["gap"]
    gap_bars.append({"label": "random maps", "value": first_gap["random"],
                     "low": first_gap["random_low"], "high": first_gap["random_high"],
                     "colour": "#999999"})
    gap_bars.append(_reference_bar(results[methods[0]].table, "counterfactual_masking", "gap",
                                   seed))
    reference = first_result.info["reference"]
    section.heading("Every figure beside random maps and the image-blind reference")
    section.para(
        "An explanation is worth reading only if it says more about <i>this</i> image than a "
        "map drawn without looking at it. The <b>image-blind reference</b> is one fixed map "
        f"used for every image: <b>{reference['name']}</b>"
        + (f", chosen among {len(reference['candidates'])} candidates by person energy on "
           f"{reference['selection_images']} images of {reference['source']} (never the "
           "scored images)" if "candidates" in reference else
           ": this data has no part masks, so the reference is a centred prior")
        + ". Its maps are scored exactly like a method's: masked on the same model, compared "
        "with the same masks. <b>Beats</b>: the 95% bootstrap interval of the paired "
        "per-query difference lies wholly on the better side; 'undetermined' where it cannot "
        "be computed.")
    section.table(verdict_table(summary["methods"], methods))
    section.heading("Faithfulness and grounding, beside random maps")
    section.para(
        f"{results[methods[0]].info['queries']} queries, each explained against its highest-"
        "ranked true match. <b>Drops</b>: fall of the pair's cosine when the map's top 20%, "
        "a random 20%, or the bottom 20% of grid cells are masked (mean colour). "
        "<b>Counterfactual gap</b>: top drop minus random drop (higher: the map points at what "
        "the match rests on). <b>Deletion/insertion</b>: area under the cosine curve as cells "
        "are removed (lower is better) or revealed (higher is better) in map order. "
        "<b>Person energy</b>: share of the map's positive mass inside the ground-truth person "
        "mask. Every figure is beside the same measure for uniform "
        "random maps on the same pairs; intervals are 95% percentile bootstraps over queries.")
    section.table(rows_table)
    fig = figures.interval_bars(gap_bars, out / "img" / "faithfulness_gap.png",
                                "counterfactual gap (cosine drop, top − random cells)", 0.0)
    section.figure(fig, "Counterfactual gap per method with 95% CI; grey: random maps; "
                        "brown: the image-blind reference's maps masked on the same model.", out)
    if has_masks:
        first_energy = summary["methods"][methods[0]]["energy"]
        energy_bars.append({"label": "random maps", "value": first_energy["random"],
                            "low": first_energy["random_low"],
                            "high": first_energy["random_high"], "colour": "#999999"})
        energy_bars.append(_reference_bar(results[methods[0]].table, "energy_pointing_game",
                                          "person_energy", seed))
        fig = figures.interval_bars(energy_bars, out / "img" / "person_energy.png",
                                    "energy pointing game (person mask)")
        section.figure(fig, "Share of each method's map mass on the person, with 95% CI; "
                            "grey: random maps (the person's area share); brown: the "
                            "image-blind reference.", out)
    panels = {metric: {m: _curve(results[m].table, metric, m) for m in methods}
              | {"random": _curve(results[methods[0]].table, metric, "random")}
              for metric in ("deletion", "insertion")}
    fig = figures.curves(panels, out / "img" / "deletion_insertion.png")
    section.figure(fig, "Deletion (cells removed most relevant first) and insertion (revealed "
                        "most relevant first) on the query image, mean over queries.", out)
    summary["queries"] = results[methods[0]].info["queries"]
    summary["score"] = results[methods[0]].info["score"]
    summary["skipped_no_valid_match"] = results[methods[0]].info["skipped_no_valid_match"]
    return summary


def _reference_bar(table: pd.DataFrame, metric: str, key: str, seed: int) -> dict[str, Any]:
    rows = table[(table.method == "reference") & (table.metric == metric) & (table.key == key)]
    ci = bootstrap_ci(rows.value.to_numpy(dtype=float), seed=seed)
    return {"label": "image-blind reference", "value": ci.estimate, "low": ci.low,
            "high": ci.high, "colour": "#a0522d"}


def figure_records(comparison: pd.DataFrame | None,
                   figures: Sequence[tuple[str, str, str]] = FIGURES
                   ) -> dict[str, dict[str, Any]]:
    """``{label: record}`` of ``figures`` (default: the report's) present in ``comparison``."""
    from ..evaluation.verdicts import json_records

    if comparison is None or comparison.empty:
        return {}
    out = {}
    for metric, key, label in figures:
        rows = comparison[(comparison.metric == metric) & (comparison.key == key)]
        if len(rows):
            out[label] = json_records(rows)[0]
    return out


def _ci(record: dict[str, Any], prefix: str) -> str:
    low, high = record.get(f"{prefix}_low"), record.get(f"{prefix}_high")
    if low is None or high is None:
        return "—"
    return f"[{low:+.3f}, {high:+.3f}]"


def verdict_table(records: dict[str, dict[str, Any]], methods: Sequence[str]
                  ) -> list[dict[str, Any]]:
    """Rows figure × method: the value, random maps, the reference, the paired difference with
    the reference and both verdicts."""
    from ..evaluation.verdicts import verdict_text

    rows = []
    for _, _, label in FIGURES:
        for method in methods:
            r = records[method].get("figures", {}).get(label)
            if r is None:
                continue
            rows.append({"figure": label, "method": method, "value": r["method"],
                         "random maps": r.get("random"),
                         "beats random": verdict_text(r.get("random_beaten")),
                         "image-blind reference": r.get("reference"),
                         "− reference [95% CI]":
                             "—" if r.get("reference_diff") is None else
                             f"{r['reference_diff']:+.3f} {_ci(r, 'reference_diff')}",
                         "beats the reference": verdict_text(r.get("reference_beaten"))})
    return rows


def sanity_part(explainer: ExplainerLike, data: ReidEvalSet, methods: Sequence[str], out: Path,
                section: Section, n_images: int = 8, steps: int = 6) -> dict[str, Any]:
    """Adebayo et al.'s cascading model-randomisation check on the first queries."""
    from ..evaluation.protocol import true_matches
    from ..evaluation.sanity import model_randomization_check

    query, gallery = ImageSource(data.query, "query"), ImageSource(data.gallery, "gallery")
    idx = list(range(min(n_images * 2, len(query))))
    q_emb, g_emb = explainer.embed(query.get(idx)), torch.cat(
        [explainer.embed(gallery.get(range(s, min(s + 128, len(gallery)))))
         for s in range(0, len(gallery), 128)])
    match = true_matches(q_emb, g_emb, data.query_pids[idx], data.query_camids[idx],
                         data.gallery_pids, data.gallery_camids)
    keep = [i for i, m in zip(idx, match, strict=True) if m >= 0][:n_images]
    targets = gallery.get([int(match[idx.index(i)]) for i in keep])
    layer = getattr(explainer.adapter, "layer_name", None)
    results = model_randomization_check(
        explainer.model, query.get(keep), targets, method=list(methods), steps=steps,
        method_options=FAST_OPTIONS, explainify_options={"layer": layer} if layer else None)
    curves = {m: (r.steps, r.curve()) for m, r in results.items()}
    threshold = next(iter(results.values())).threshold
    fig = figures.randomization(curves, threshold, out / "img" / "randomization.png")
    section.heading("Sanity check: model randomisation")
    section.para("Layers of a copy of the model are re-initialised from the top down "
                 "(cascading, Adebayo et al. 2018) and each method's maps recomputed; a map "
                 "that still looks the same explains the input, not the model. Pass: the mean "
                 f"Spearman similarity of |maps| falls below {threshold}. A step whose maps "
                 "are not finite or became constant has no similarity: the verdict is then "
                 "undetermined, not a pass.")
    section.table([{"method": m, "similarity after the last step": r.curve()[-1],
                    "lowest": min((v for v in r.curve() if v == v), default=float("nan")),
                    "verdict": r.verdict,
                    "undefined steps": "; ".join(r.notes) or "-"}
                   for m, r in results.items()])
    section.figure(fig, "Similarity of each method's maps to the trained model's maps as more "
                        "layers are randomised (dashed: pass threshold).", out)
    return {m: r.to_json() for m, r in results.items()}


def attribute_part(outcomes: pd.DataFrame, attributes: pd.DataFrame, out: Path,
                   section: Section, n_estimators: int = 100,
                   rank_bootstrap: int = 20) -> dict[str, Any]:
    """Which attributes the model's per-query AP and rank-1 hits depend on, with bootstrap
    intervals of the ranks over identities (``rank_bootstrap`` draws; 0: none)."""
    from ..attributes.rank_intervals import add_rank_intervals
    from ..attributes.study import run_study
    from ..errors import ReidExplainError

    try:
        study = run_study(outcomes, attributes, missing="drop", n_estimators=n_estimators,
                          n_repeats=3)
    except (ReidExplainError, np.linalg.LinAlgError, ValueError) as exc:
        # a study the data cannot support (too few queries for the attributes' levels) is
        # reported as such; the rest of the report stands
        reason = f"{type(exc).__name__}: {exc}"
        section.verdict(False, f"The attribute study could not run on these "
                               f"{len(outcomes)} queries ({reason}). It needs more queries "
                               "than attribute levels; see docs/attribute_study.md.")
        return {"error": reason, "n_queries": len(outcomes)}
    if rank_bootstrap:
        try:
            add_rank_intervals(study, outcomes, attributes, n_boot=rank_bootstrap)
        except ReidExplainError as exc:  # too few draws analysable: said, not fatal
            study.notes.append(f"rank intervals: {exc}")
    folder = study.save(out / "attribute_study")
    summary = study.summary()
    if study.exploratory:
        section.verdict(False, "Exploratory: "
                        + ", ".join(f"{a} has a level seen in {n} identities"
                                    for a, n in study.thin.items())
                        + f", fewer than the {summary['min_identities']} a confirmatory "
                          "reading needs (docs/attribute_study.md). The ranking below is a "
                          "lead, not a finding.")
    section.para(f"{summary['n_queries']} queries of {summary['n_identities']} identities: each "
                 "query's AP and rank-1 hit regressed on the attributes of its identity with "
                 "GLMs (Wald tests), random-forest permutation importance, SHAP values and "
                 f"FDR-corrected ({summary['fdr_method']}) hypothesis tests; the consensus is "
                 "the mean rank over methods. Full tables: attribute_study/.")
    cols = [c for c in study.ranking.columns if c in ("attribute", "consensus_rank",
                                                       "mean_rank")]
    shown = study.ranking[cols].head(12)
    intervals = study.rank_intervals
    if intervals is not None:
        by_name = intervals.table.set_index("attribute")
        shown = shown.assign(**{
            f"rank {intervals.level:.0%} interval": [
                f"{by_name.loc[a, 'low']:.1f}–{by_name.loc[a, 'high']:.1f}"
                for a in shown["attribute"]],
            "tied group": [int(by_name.loc[a, "group"]) for a in shown["attribute"]]})
        section.para(f"Rank intervals: {len(intervals.draws)} bootstrap draws of the "
                     "identities (each drawn identity brings all its queries), the study rerun "
                     "on each with a lighter forest; attributes whose intervals share a point "
                     f"form a tied group. {len(intervals.groups)} groups: "
                     + " &gt; ".join("{" + ", ".join(g) + "}" for g in intervals.groups)
                     + ". Within a group this sample cannot order the attributes.")
    section.table(shown.to_dict(orient="records"))
    section.figure(folder / "plots" / "consensus.png", "Consensus ranking of the attributes "
                   "(mean rank over methods and responses).", out)
    if study.notes:
        section.para("Notes from the fits, each once: " + " | ".join(study.notes))
    return {"ranking": summary["ranking"], "n_queries": summary["n_queries"],
            "exploratory": summary["exploratory"], "support": summary["support"],
            "notes": study.notes, "rank_intervals": summary["rank_intervals"]}


def pair_part(features: tuple[torch.Tensor, torch.Tensor], data: ReidEvalSet,
              attributes: pd.DataFrame, section: Section) -> dict[str, Any]:
    """Pairwise reliance (:mod:`reid_explain.attributes.pair_reliance`): how much more alike
    the model finds two different people who share each attribute's state."""
    from ..attributes.pair_reliance import pair_reliance
    from ..errors import ReidExplainError

    section.heading("Pairwise reliance: what two different people must share to look alike")
    try:
        result = pair_reliance(*features, data.query_pids, data.gallery_pids, attributes)
    except (ReidExplainError, np.linalg.LinAlgError, ValueError) as exc:
        reason = f"{type(exc).__name__}: {exc}"
        section.verdict(False, f"Pairwise reliance could not be measured ({reason}).")
        return {"error": reason}
    record = result.to_json()
    section.para(
        f"{record['config']['pairs']} query-gallery pairs of different identities: their "
        "cosine similarity regressed (OLS) on one indicator per attribute, 'both people have "
        "the same state', all attributes jointly; 95% intervals cluster-robust in both "
        "identities. An effect is the similarity one shared attribute adds to a distractor: "
        "reliance per occurrence, which the study above, reading AP against the query's own "
        "attributes, does not measure (docs/attribute_study.md).")
    section.table([{"attribute": r["attribute"], "effect on similarity": r["effect"],
                    "95% CI": f"[{r['low']:.4f}, {r['high']:.4f}]", "p": r["p"],
                    "pairs sharing it": r["shared"]} for r in record["attributes"]])
    return record


def causal_part(audit: Any, study: dict[str, Any], section: Section) -> dict[str, Any]:
    """The causal audit beside the observational ranking: what changing each attribute on
    the same person costs the model, and how far the study's ranking agrees with it."""
    from ..attributes.causal import agreement

    record = audit.to_json()
    section.heading("Causal reliance: the same person re-rendered with one attribute changed")
    section.para(
        f"{record['queries']} queries of {record['identities']} identities, each re-rendered "
        "with one attribute set to another state (drawn uniformly among its other states), "
        "everything else the same image: camera, view, pose, crop, noise. <b>AP drop</b>: the "
        "query's AP against the unchanged gallery, before minus after; <b>shift</b>: 1 − cosine "
        "of the two embeddings; <b>flips</b>: rank-1 hits lost. Means over identities with 95% "
        "bootstrap intervals over identities. This is what the model relies on, measured "
        "directly; the study above infers it from who happens to wear what.")
    section.table([{"attribute": r["attribute"], "AP drop": r["ap_drop"],
                    "AP drop 95% CI": f"[{r['ap_drop_low']:.3f}, {r['ap_drop_high']:.3f}]",
                    "shift": r["shift"], "rank-1 flips": r["flip"],
                    "pixels changed": r["changed_pixels"]} for r in record["attributes"]])
    if "ranking" in study:
        record["agreement"] = agreement(record["ranking"], study["ranking"])
        a = record["agreement"]
        section.verdict(a["spearman"] >= 0.8 and a["top3_shared"] == 3,
                        f"The study's consensus ranking against causal reliance: Spearman ρ "
                        f"{a['spearman']:.2f}, {a['top3_shared']}/3 of the causal top three "
                        f"shared (causal top: {', '.join(a['causal_top'])}; study top: "
                        f"{', '.join(a['observed_top'])}).")
    if "ranking" in study.get("pair_reliance", {}):
        record["pair_agreement"] = agreement(record["ranking"], study["pair_reliance"]["ranking"])
        a = record["pair_agreement"]
        section.verdict(a["spearman"] >= 0.8 and a["top3_shared"] == 3,
                        f"Pairwise reliance against causal reliance: Spearman ρ "
                        f"{a['spearman']:.2f}, {a['top3_shared']}/3 of the causal top three "
                        f"shared (pairwise top: {', '.join(a['observed_top'])}).")
    return record
