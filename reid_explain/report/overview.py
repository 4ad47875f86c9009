"""The overview a report opens with: headline tiles, every image method against the image-blind
reference and random maps, and the one-screen ``summary.txt``.

``reid-explain demo`` and ``reid-explain report`` share it, so a real checkpoint's report reads
like the demo's: how many methods beat the reference leads, random maps come second.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .html import Section

__all__ = ["HEADLINE", "attribute_line", "beating_counts", "headline", "image_lines",
           "overview_section", "times_line"]

#: the headline figures: (label in the report's FIGURES, short name)
HEADLINE = (("counterfactual gap", "gap"), ("person energy", "energy"), ("pointing", "pointing"))


def headline(image: dict[str, Any]) -> list[dict[str, Any]]:
    """Per image method and headline figure of an image summary (``summary["image"]``): the
    value with its 95% CI, random maps, the image-blind reference, and whether the method
    beats each (True / False / None: undetermined)."""
    rows = []
    for method, r in image["explanations"]["methods"].items():
        row: dict[str, Any] = {"method": method}
        for label, short in HEADLINE:
            f = r.get("figures", {}).get(label)
            if f is None:
                continue
            row |= {short: f["method"], f"{short}_low": f["method_low"],
                    f"{short}_high": f["method_high"], f"{short}_random": f.get("random"),
                    f"{short}_beats_random": f.get("random_beaten"),
                    f"{short}_reference": f.get("reference"),
                    f"{short}_beats_reference": f.get("reference_beaten"),
                    f"{short}_reference_diff_low": f.get("reference_diff_low"),
                    f"{short}_reference_diff_high": f.get("reference_diff_high"),
                    f"{short}_higher_is_better": f.get("higher_is_better", True)}
        rows.append(row)
    return rows


def _verdict_mark(row: dict[str, Any], short: str) -> str:
    """">" beats the reference (the paired CI on the better side of 0), "<" falls below it
    (the CI on the worse side), "≈" not told apart (the CI holds 0), "?" undetermined. A plain
    "≤" read 0.670 ≤ 0.605 where the method was higher but not surely so."""
    beats = row.get(f"{short}_beats_reference")
    low, high = row.get(f"{short}_reference_diff_low"), row.get(f"{short}_reference_diff_high")
    if beats is True:
        return ">"
    if beats is None or low is None or high is None:
        return "?"
    worse = high < 0 if row.get(f"{short}_higher_is_better", True) else low > 0
    return "<" if worse else "≈"


def beating_counts(rows: list[dict[str, Any]], versus: str) -> dict[str, str]:
    """``{figure: "k/n"}``: methods whose CI beats ``versus`` ("reference" or "random")."""
    return {short: f"{sum(r.get(f'{short}_beats_{versus}') is True for r in rows)}/"
                   f"{sum(short in r for r in rows)}"
            for _, short in HEADLINE if any(short in r for r in rows)}


def image_lines(image: dict[str, Any]) -> list[str]:
    """The image methods' lines of ``summary.txt``: counts beating the reference (first) and
    random maps, one row per method, the randomisation verdicts."""
    explanations = image["explanations"]
    reference = explanations.get("reference") or {}
    rows = headline(image)
    lines = ["methods beating the image-blind reference (95% CI): "
             + ", ".join(f"{k} {v}" for k, v in beating_counts(rows, "reference").items())
             + "; beating random maps: "
             + ", ".join(f"{k} {v}" for k, v in beating_counts(rows, "random").items()),
             f"image maps ({explanations['queries']} queries, "
             f"{explanations.get('score', 'cosine')} score), each: value [95% CI], then "
             f"> (beats), ≈ (not told apart) or < (below) the image-blind reference "
             f"({reference.get('name', '?')}) and its value:",
             f"  {'method':22s}" + "".join(f" {short:>30s}" for _, short in HEADLINE)]
    for row in rows:
        cells = []
        for _, short in HEADLINE:
            if short not in row:
                cells.append(f" {'-':>30s}")
                continue
            ref = row[f"{short}_reference"]
            cell = (f"{row[short]:.3f} [{row[f'{short}_low']:.3f},{row[f'{short}_high']:.3f}] "
                    f"{_verdict_mark(row, short)} "
                    + ("-" if ref is None else f"{ref:.3f}"))
            cells.append(f" {cell:>30s}")
        lines.append(f"  {row['method']:22s}" + "".join(cells))
    randomization = image.get("randomization") or {}
    passed = [m for m, r in randomization.items() if r["verdict"] == "passes"]
    undetermined = [m for m, r in randomization.items() if r["verdict"] == "undetermined"]
    lines.append(f"model randomisation: maps change with the weights for {len(passed)} of "
                 f"{len(randomization)} methods ({', '.join(passed)})"
                 + (f"; undetermined for {', '.join(undetermined)}" if undetermined else ""))
    return lines


def attribute_line(study: dict[str, Any]) -> str:
    """The attribute study's line: tied groups of the ranking where intervals exist."""
    groups = (study.get("rank_intervals") or {}).get("groups")
    if "ranking" not in study:
        return f"attribute study did not run: {study.get('error', '?')}"
    prefix = "attribute study" + (" (EXPLORATORY: too few identities per level)"
                                  if study.get("exploratory") else "")
    if groups:
        line = (f"{prefix}, most relied-on first, tied groups (95% bootstrap over "
                "identities): " + " > ".join("{" + ", ".join(g) + "}" for g in groups))
    else:
        line = f"{prefix}, most relied-on first: " + ", ".join(study["ranking"][:5])
    pairs = study.get("pair_reliance", {})
    if "ranking" in pairs:
        line += ("\npairwise reliance (similarity a shared state adds to a distractor): "
                 + ", ".join(f"{r['attribute']} {r['effect']:+.3f}"
                             for r in pairs["attributes"][:5]))
    causal = study.get("causal")
    if causal:
        line += ("\ncausal reliance (same person re-rendered, AP drop): " + ", ".join(
            f"{r['attribute']} {r['ap_drop']:.2f}" for r in causal["attributes"][:5]))
        a = causal.get("agreement")
        if a:
            line += (f"; the study agrees at Spearman ρ {a['spearman']:.2f}, top-3 "
                     f"{a['top3_shared']}/3")
        a = causal.get("pair_agreement")
        if a:
            line += (f"; pairwise reliance at ρ {a['spearman']:.2f}, top-3 "
                     f"{a['top3_shared']}/3")
    return line


def word_line(words: dict[str, Any]) -> str:
    """Word relevance's line: its counterfactual gap beside random words and the stronger
    caption-blind reference, each with its mark (as the image maps' table); phrases likewise
    when the captions have phrase spans."""
    def one(scored: dict[str, Any], unit: str) -> str:
        gap, refs = scored["gap"], scored["references"]
        reference = refs[scored["reference"]]["gap"]["mean"]
        mark = {True: ">", None: "?"}.get(scored["beaten"],
                                          "<" if scored["diff_high"] < 0 else "≈")
        return (f"{unit} gap {gap['mean']:.4f} [{gap['low']:.4f}, {gap['high']:.4f}] {mark} "
                f"caption-blind reference ({scored['reference']} prior) {reference:.4f}: "
                f"{scored['diff']:+.4f} [{scored['diff_low']:+.4f}, {scored['diff_high']:+.4f}]")

    line = (f"word relevance ({words['method']}, {words['pairs']} captions): "
            + one(words, f"top {words['k']:.0%} words"))
    if words.get("phrases"):
        line += "; " + one(words["phrases"], "top phrase")
    return line


def times_line(times: dict[str, float]) -> str:
    return "times (s): " + ", ".join(f"{k} {v}" for k, v in times.items())


def overview_section(section: Section, image: dict[str, Any], text: str,
                     tiles: Sequence[tuple[str, str]], total_seconds: float, what: str) -> None:
    """Headline tiles (``tiles`` first, then methods beating the reference, random maps and
    the run time), what the page shows, the per-method verdict table and ``text``."""
    from ..evaluation.verdicts import verdict_text

    rows = headline(image)
    versus_reference = beating_counts(rows, "reference")
    versus_random = beating_counts(rows, "random")
    section.kpis([*tiles,
                  *[(f"methods beating the image-blind reference ({k})", v)
                    for k, v in versus_reference.items()],
                  ("methods beating random maps (gap)", versus_random.get("gap", "-")),
                  ("run time", f"{total_seconds:.0f} s")])
    reference = image["explanations"].get("reference") or {}
    chosen = ("chosen on validation identities" if "candidates" in reference
              else "no part masks here, so a centred prior")
    section.para(f"What this page shows: {what} Every score stands beside the same score of "
                 "the strongest map drawn without looking at the image "
                 f"(<b>{reference.get('name', '?')}</b>, {chosen}) and of random maps; a "
                 "method beats one when the 95% CI of its paired difference excludes 0.")
    section.table([{"method": r["method"],
                    **{f"{short}": r.get(short) for _, short in HEADLINE},
                    **{f"{short}, reference": r.get(f"{short}_reference")
                       for _, short in HEADLINE},
                    **{f"beats the reference ({short})":
                       verdict_text(r.get(f"{short}_beats_reference")) for _, short in HEADLINE},
                    "beats random maps (gap)": verdict_text(r.get("gap_beats_random"))}
                   for r in rows])
    section.code(text)
