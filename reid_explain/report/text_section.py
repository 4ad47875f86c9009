"""The text-to-image part of a report (CLIP-style hosts): retrieval from captions, which
patches and words a match rests on, and per-phrase grounding scored against part masks beside
an image-blind location prior, with the counterfactual gap of the phrase maps."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..evaluation.verdicts import verdict_text
from . import figures
from .html import Section
from .image_section import display_images

if TYPE_CHECKING:
    from ..plugin_api.interfaces import ExplainerLike
    from ..training.text_image import TextImageData

#: the name of the strongest image-blind phrase reference in tables and summaries
REFERENCE = "sharpened prior (image-blind, chosen on validation)"
#: phrase-map methods of the report: the head-free similarity map, CLIP dense features
#: (``dense_similarity``, hosts with dense embeddings), two attributions, and attention
#: relevance at pixel resolution (``relevance_ig``, ViT hosts)
PHRASE_METHODS = ("similarity", "dense_similarity", "gradcam", "attention_relevance",
                  "relevance_ig")
#: methods that cost integrated gradients per phrase are scored on the first this many
#: captions (their verdict pairs them with the reference on the same phrases)
COSTLY_PHRASE_CAPTIONS = {"relevance_ig": 100}


def one_caption_per_identity(data: TextImageData, n: int) -> list[int]:
    """The first caption of each of the first ``n`` identities (figures show different people)."""
    rows, seen = [], set()
    for row, pid in enumerate(data.caption_pids.tolist()):
        if pid not in seen and (not data.phrases or data.phrases[row]):
            seen.add(pid)
            rows.append(row)
            if len(rows) == n:
                break
    return rows


def text_retrieval_part(explainer: ExplainerLike, data: TextImageData, out: Path, section: Section,
                        n_show: int = 4, top_k: int = 5) -> dict[str, Any]:
    from ..evaluation.retrieval import text_image_metrics

    text = torch.cat([explainer.embed_text(data.captions[s:s + 256])
                      for s in range(0, len(data), 256)])
    image = torch.cat([explainer.embed(data.images[s:s + 256])
                       for s in range(0, len(data.images), 256)])
    result = text_image_metrics(text, image, data.caption_pids, data.image_pids)
    metrics = {k: float(result[k]) for k in ("R1", "R5", "R10", "mAP", "mINP")} | {
        "captions": len(data), "images": len(data.images)}
    shown = one_caption_per_identity(data, n_show)
    top = (text[shown] @ image.T).topk(min(top_k, len(image)), dim=1)
    matches = data.image_pids[top.indices.numpy()] == data.caption_pids[shown][:, None]
    gallery = [display_images(explainer, data.images[row]) for row in top.indices]
    fig = figures.text_ranked([data.captions[i] for i in shown], gallery, matches,
                              top.values.numpy(), out / "img" / "text_retrieval.png")
    section.kpis([("text→image R@1", f"{metrics['R1']:.1f}%"),
                  ("R@5", f"{metrics['R5']:.1f}%"), ("mAP", f"{metrics['mAP']:.1f}%"),
                  ("captions", str(len(data))), ("images", str(len(data.images)))])
    section.figure(fig, "Top-5 images for captions of the test split (green: the described "
                        "person, red: another; number: cosine similarity).", out)
    return metrics


def caption_maps_part(explainer: ExplainerLike, data: TextImageData, methods: Sequence[str],
                      out: Path, section: Section, n_show: int = 3) -> dict[str, Any]:
    """Which patches (every image method) and which words (token IG) support a caption."""
    rows = one_caption_per_identity(data, n_show)
    owners = [int(data.caption_image[r]) for r in rows]
    pairs = [(i, i) for i in range(len(rows))]  # each caption with its own image
    captions = [data.captions[r] for r in rows]
    maps: dict[str, np.ndarray] = {}
    words = None
    for k, method in enumerate(methods):
        expl = explainer.explain_text(captions, data.images[owners], method=method,
                                      text_method="token_ig" if k == 0 else None, pairs=pairs)
        maps[method] = expl.image.upsampled().numpy()
        if k == 0:
            words = expl.text
    images = display_images(explainer, data.images[owners])
    grid = [{"label": f"caption {r}", "image": images[i],
             "masks": None if data.masks is None else data.masks[owners[i]].numpy(),
             "maps": {m: maps[m][i] for m in methods}} for i, r in enumerate(rows)]
    section.heading("Which patches and words a match rests on")
    fig = figures.map_grid(grid, list(methods), out / "img" / "caption_maps.png",
                           signed=figures.signed_methods(methods))
    section.figure(fig, "Each caption's own image, its ground-truth parts, and each method's "
                        "map of the caption-image cosine.", out)
    if getattr(explainer, "ppim", None) is not None:  # a model trained with PPIM
        fig = figures.phrase_panels(_phrase_panels(explainer, data, "ppim", n_show),
                                    out / "img" / "ppim_phrase_maps.png")
        section.figure(fig, "The trained PPIM head's own phrase maps, InterPartAbility's "
                            "explanation: where the head pools each phrase of the caption ("
                            + ("the data's phrase spans" if data.phrases else
                               "phrases found by the rule extractor") + ").", out)
    for i, r in enumerate(rows):
        fig = figures.word_relevance(words.words(i), out / "img" / f"words_{i}.png",
                                     f"token IG relevance: “{captions[i][:70]}”")
        section.figure(fig, f"Word relevance for caption {r} against its image.", out)
    return {"captions": captions}


def _interval_text(interval: dict[str, Any]) -> str:
    return f"{interval['mean']:.4f} [{interval['low']:.4f}, {interval['high']:.4f}]"


def word_part(explainer: ExplainerLike, data: TextImageData, section: Section,
              max_captions: int = 100, seed: int = 0, n_steps: int = 16) -> dict[str, Any]:
    """Token IG's word relevance scored by counterfactual word removal beside random words and
    the caption-blind references (:mod:`~reid_explain.evaluation.word_reference`), on up to
    ``max_captions`` captions spread over the split, each against its own image. ``n_steps``
    16: on the choice seed's validation captions the gaps equal 32 steps' to four decimals at
    about half the time (``benchmarks/probe_word_steps.py``)."""
    from ..evaluation.word_reference import split_word_faithfulness

    result = split_word_faithfulness(explainer, data, max_captions, seed=seed,
                                     text_options={"n_steps": n_steps})
    section.heading("Word relevance against a caption-blind reference")
    section.para(
        f"Token IG's word relevance ({n_steps} steps) on {result['pairs']} captions, each with "
        "its own image: "
        f"<b>gap</b> = drop of the caption-image cosine when the top {result['k']:.0%} of the "
        "words are removed, minus the drop for as many random words (the same random draws "
        "for every row; with phrase spans also the top phrase against a random phrase, a "
        "phrase's relevance the sum over its words). The caption-blind references never see "
        "the scored pair: "
        "<b>lexical</b> ranks each word by its mean share of relevance in the captions of the "
        "other half of the identities, <b>position</b> by the mean share at its position. "
        "Token IG beats a reference when the 95% bootstrap interval of the per-caption gap "
        "difference excludes 0; each row is paired with the stronger reference for the same "
        "removal.")
    table = []
    for unit, scored in [("words", result), ("phrases", result.get("phrases"))]:
        if scored is None:
            continue
        what = f"top {result['k']:.0%} of the words" if unit == "words" else "top phrase"
        table.append({"removed": what, "relevance": result["method"],
                      "gap [95% CI]": _interval_text(scored["gap"]),
                      "− reference [95% CI]": f"{scored['diff']:+.4f} [{scored['diff_low']:+.4f}"
                                              f", {scored['diff_high']:+.4f}]",
                      "beats random": verdict_text(scored["beats_random"]),
                      "beats the caption-blind reference": verdict_text(scored["beaten"])})
        table += [{"removed": what, "relevance": f"{kind} reference (caption-blind)",
                   "gap [95% CI]": _interval_text(r["gap"]), "− reference [95% CI]": "",
                   "beats random": "", "beats the caption-blind reference": ""}
                  for kind, r in scored["references"].items()]
    section.table(table)
    return result


def grounding_part(explainer: ExplainerLike, data: TextImageData, reference: TextImageData | None,
                   out: Path, section: Section, max_captions: int, n_show: int = 3,
                   seed: int = 0) -> dict[str, Any]:
    """Per-phrase maps scored against each phrase's own part mask, beside the image-blind
    location prior and chance; counterfactual gap of each method's phrase maps."""
    from ..evaluation.phrase_grounding import (
        choose_phrase_reference,
        collect_phrase_maps,
        location_prior_scores,
        maps_counterfactual_gap,
        phrase_verdict,
        prior_phrase_maps,
        score_phrase_maps,
    )

    caps = set(explainer.adapter.capabilities)
    methods = [m for m in PHRASE_METHODS if m == "similarity" or _supports(m, caps)]
    if getattr(explainer, "ppim", None) is not None:  # the model's own PPIM head
        methods.append("ppim")
    captions = {m: min(max_captions, COSTLY_PHRASE_CAPTIONS.get(m, max_captions))
                for m in methods}
    maps = {m: collect_phrase_maps(explainer, data, m, max_captions=captions[m])
            for m in methods}  # computed once: scored, then masked for the gap
    scores = {m: score_phrase_maps(data, maps[m]) for m in methods}
    size = tuple(data.images.shape[-2:])
    grid = explainer.adapter.grid_size(size)
    chosen, verdicts = None, {}
    if reference is not None and reference.masks is not None:
        scores["location prior (image-blind)"] = location_prior_scores(
            reference, data, grid, max_captions=max_captions)
        if len(np.unique(reference.image_pids)) >= 2:
            # drawn on the patch grid or at pixels, per part whichever wins on validation:
            # a pixel-level method faces the prior at pixels too
            chosen = choose_phrase_reference(reference, grid, resolutions=(grid, size))

            def reference_scores(n: int) -> dict[str, Any]:
                return score_phrase_maps(data, prior_phrase_maps(
                    chosen["build"], data, grid, n, chosen["powers"], chosen["grids"]))

            scores[REFERENCE] = reference_scores(max_captions)
            verdicts = {m: phrase_verdict(scores[m], scores[REFERENCE] if captions[m] ==
                                          max_captions else reference_scores(captions[m]),
                                          seed=seed)
                        for m in methods}
    shared: dict = {}  # the random cells' drops, the same for every method's maps
    gaps = {m: maps_counterfactual_gap(explainer, data, maps[m], seed=seed, shared=shared)
            for m in methods}
    chance = _chance(data, scores[methods[0]]["records"])
    parts = sorted({p for s in scores.values() for p in s["by_part"]})
    table = []
    for name, s in scores.items():
        row: dict[str, Any] = {"phrase maps": name, "phrases": s["phrases"],
                               "energy": s["energy"], "pointing": s["pointing"]}
        if name in gaps:
            g = gaps[name]
            row["counterfactual gap [95% CI]"] = (f"{g['gap']:.3f} [{g['gap_ci_low']:.3f}, "
                                                  f"{g['gap_ci_high']:.3f}]")
        row.update({p: s["by_part"].get(p, {}).get("energy") for p in parts})
        table.append(row)
    table.append({"phrase maps": "chance (part's area share)", "phrases": len(chance["records"]),
                  "energy": chance["energy"], **{p: chance["by_part"].get(p) for p in parts}})
    section.heading("Per-phrase grounding against the true part masks")
    section.para("Every part phrase of a caption (“red shirt”, “black backpack”) gets its own "
                 "map, scored against the mask of the part it names: <b>energy</b> = share of "
                 "the map's mass on that part, <b>pointing</b> = the map's peak lies on it. The "
                 "<b>location prior</b> knows no image: each phrase's map is its part's mean "
                 "mask over reference images; a map must beat it to show it reads the image. "
                 "<b>Counterfactual gap</b>: caption-image cosine drop when the top 20% cells "
                 "of the caption's phrase maps are masked, minus the drop for random cells. "
                 "Columns after the gap: energy per part.")
    section.table(table)
    if verdicts:
        section.para(
            f"<b>{REFERENCE}</b>: each part's mean mask over half of the validation "
            "identities, drawn on the patch grid or at pixel resolution and raised to the "
            "power (both per part) that give that part's phrases the highest energy on the "
            "other half; it never sees a scored image. A method beats it when the 95% "
            "bootstrap interval of the per-phrase energy difference excludes 0; per part "
            "likewise. " + "; ".join(f"{m} is scored on the first {captions[m]} captions, "
                                     "the reference beside it on the same ones"
                                     for m in methods if captions[m] < max_captions))
        section.table([{"phrase maps": m, "energy": v["method"],
                        "reference energy": v["reference"],
                        "− reference [95% CI]": f"{v['diff']:+.3f} [{v['diff_low']:+.3f}, "
                                                f"{v['diff_high']:+.3f}]",
                        "beats the reference": verdict_text(v["beaten"]),
                        "parts beaten": f"{v['parts_beaten']}/{v['parts']}"}
                       for m, v in verdicts.items()])
    best = max(methods, key=lambda m: scores[m]["energy"])
    panels = _phrase_panels(explainer, data, best, n_show)
    fig = figures.phrase_panels(panels, out / "img" / "phrase_grounding.png")
    section.figure(fig, f"Phrase maps ({best}, the best method by energy here) beside each "
                        "phrase's true part; E = energy on that part.", out)
    return {"scores": {k: {kk: vv for kk, vv in v.items() if kk != "records"}
                       for k, v in scores.items()},
            "gaps": gaps, "chance": {k: v for k, v in chance.items() if k != "records"},
            "shown_method": best,
            "captions": captions,
            "reference": None if chosen is None else {
                "name": REFERENCE, "powers": chosen["powers"],
                "grids": {part: f"{h}x{w}" for part, (h, w) in chosen["grids"].items()},
                "resolution_selection": chosen["resolution_selection"],
                "identities": chosen["identities"],
                "selection": {part: {f"{p:g}": round(e, 4) for p, e in scores.items()}
                              for part, scores in chosen["selection"].items()}},
            "verdicts": verdicts}


def _supports(method: str, caps: set[str]) -> bool:
    from ..plugin_api import manager as plugin_manager

    return set(plugin_manager.get("attributions", method).obj.requires) <= caps


def _chance(data: TextImageData, records: list[dict[str, Any]]) -> dict[str, Any]:
    """Energy of a map that says nothing: the part mask's area share (mean over phrases)."""
    shares = []
    for r in records:
        mask = data.masks[int(data.caption_image[r["caption"]])][
            list(data.part_names).index(r["part"])]
        shares.append((r["part"], float(mask.float().mean())))
    by_part = {p: float(np.mean([s for q, s in shares if q == p])) for p in {q for q, _ in shares}}
    return {"energy": float(np.mean([s for _, s in shares])) if shares else float("nan"),
            "by_part": by_part, "records": shares}


def _phrase_panels(explainer: ExplainerLike, data: TextImageData, method: str,
                   n_show: int) -> list[dict[str, Any]]:
    from ..evaluation.grounding_scores import energy_pointing_game

    rows = one_caption_per_identity(data, n_show)
    image_rows = [int(data.caption_image[r]) for r in rows]
    spans = [data.phrases[r] for r in rows] if data.phrases else None  # else rule-extracted
    groundings = explainer.ground(data.images[image_rows], [data.captions[r] for r in rows],
                                  method=method, phrases=spans)
    images = display_images(explainer, data.images[image_rows])
    panels = []
    for i, g in enumerate(groundings):
        maps = g.maps.upsampled()
        items = []
        for j, phrase in enumerate(g.phrases[:4]):
            part = phrase.get("part")
            mask = (data.masks[image_rows[i]][list(data.part_names).index(part)]
                    if data.masks is not None and part in data.part_names else None)
            energy = (float(energy_pointing_game(maps[j:j + 1], mask[None, None])[0, 0])
                      if mask is not None and mask.any() else None)
            items.append({"text": phrase["text"], "map": maps[j].numpy(),
                          "mask": None if mask is None else mask.numpy(), "energy": energy})
        panels.append({"image": images[i], "phrases": items})
    return panels
