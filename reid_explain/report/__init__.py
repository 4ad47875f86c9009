"""HTML reports: what a model's explanations show, how faithful they are, and what it relies on.

``image_report(explainer, data, out)`` is the report of any image ReID model on a
:class:`~reid_explain.evaluation.protocol.ReidEvalSet` (``Explainer.report`` and
``reid-explain report`` call it); ``reid-explain demo`` adds the text-to-image part for a CLIP
host. Output: ``index.html`` with ``img/`` beside it and ``summary.json``, written atomically.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._util.provenance import code_digest
from ..plugin_api import manager as plugin_manager
from .html import Section, render
from .overview import attribute_line, image_lines, overview_section, times_line, word_line
from .stages import StageClock

if TYPE_CHECKING:
    import pandas as pd

    from ..evaluation.protocol import ReidEvalSet
    from ..plugin_api.interfaces import ExplainerLike

__all__ = ["Section", "image_report", "image_sections", "reproduce_section", "render",
           "text_sections"]


def image_sections(explainer: ExplainerLike, data: ReidEvalSet, out: Path,
                   methods: Sequence[str] | None = None, n_queries: int = 100,
                   attributes: pd.DataFrame | None = None, sanity_images: int = 8,
                   trees: int = 100, top_k: int = 5, times: dict[str, float] | None = None,
                   causal: dict[str, Any] | None = None, rank_bootstrap: int = 20
                   ) -> tuple[list[Section], dict[str, Any]]:
    """Retrieval, explanations + faithfulness, sanity check and (with ``attributes``) the
    attribute study of an image ReID host (``trees`` per forest, ``rank_bootstrap`` draws of
    the rank intervals, 0: none), as report sections and a summary. ``causal``
    (``{"config": SynthConfig fields, "max_ids": int | None}``, a SynthPedes data set) adds
    the causal attribute audit beside the study (:mod:`reid_explain.attributes.causal`)."""
    from . import image_section as img

    clock = StageClock(times)
    chosen = img.image_methods(explainer, methods)
    retrieval = Section("Image ReID: retrieval", "image-retrieval")
    with clock.stage("image retrieval", f"{len(data.query_pids)} queries, "
                                        f"{len(data.gallery_pids)} gallery"):
        got = img.retrieval_part(explainer, data, out, retrieval, top_k=top_k)
    explanations = Section("Image ReID: explanations and faithfulness", "image-explanations")
    summary: dict[str, Any] = {"adapter": explainer.adapter.describe(),
                               "retrieval": got["retrieval"]}
    with clock.stage("image explanations and metrics",
                     f"{len(chosen)} methods x {min(n_queries, len(data.query_pids))} queries"):
        summary["explanations"] = img.explanation_part(explainer, data, chosen, out,
                                                       explanations, n_queries=n_queries)
    sanity = Section("Sanity check", "sanity")
    with clock.stage("model randomisation", f"{len(chosen)} methods"):
        summary["randomization"] = img.sanity_part(explainer, data, chosen, out, sanity,
                                                   n_images=sanity_images)
    sections = [retrieval, explanations, sanity]
    if attributes is not None:
        study = Section("Attribute study", "attributes")
        with clock.stage("attribute study", f"{len(got['outcomes'])} queries, "
                                            f"{rank_bootstrap} rank-interval draws"):
            summary["attributes"] = img.attribute_part(got["outcomes"], attributes, out, study,
                                                       n_estimators=trees,
                                                       rank_bootstrap=rank_bootstrap)
        with clock.stage("pairwise attribute reliance", "distractor pairs"):
            summary["attributes"]["pair_reliance"] = img.pair_part(got["features"], data,
                                                                   attributes, study)
        if causal is not None:
            from ..attributes.causal import audit_explainer

            with clock.stage("causal attribute audit", "each query re-rendered 12 times"):
                summary["attributes"]["causal"] = img.causal_part(
                    audit_explainer(explainer, data, causal), summary["attributes"], study)
        sections.append(study)
    return sections, summary


def text_sections(explainer: ExplainerLike, data: Any, out: Path,
                  methods: Sequence[str] | None = None, reference: Any = None,
                  max_captions: int = 300, top_k: int = 5,
                  times: dict[str, float] | None = None, word_captions: int = 100
                  ) -> tuple[list[Section], dict[str, Any]]:
    """Text-to-image retrieval, caption maps and word relevance of a CLIP-style host on a
    :class:`~reid_explain.training.text_image.TextImageData`; with part masks (SynthPedes) also
    per-phrase grounding beside the location prior built from ``reference``."""
    from . import image_section as img
    from . import text_section as txt

    clock = StageClock(times)
    section = Section("Text-to-image ReID", "text")
    with clock.stage("text retrieval and caption maps", f"{len(data)} captions"):
        summary: dict[str, Any] = {
            "adapter": explainer.adapter.describe(),
            "retrieval": txt.text_retrieval_part(explainer, data, out, section, top_k=top_k)}
        txt.caption_maps_part(explainer, data, img.image_methods(explainer, methods), out,
                              section)
    from ..evaluation.word_reference import spread_rows

    if ("text_counterfactual_masking" in plugin_manager.registry("metrics")
            and "token_ig" in plugin_manager.registry("attributions")
            and len(set(data.caption_pids[spread_rows(data, word_captions)].tolist())) >= 2):
        with clock.stage("word relevance against a caption-blind reference",
                         f"up to {word_captions} captions"):
            summary["words"] = txt.word_part(explainer, data, section,
                                             max_captions=word_captions)
    if data.masks is not None and data.phrases:
        with clock.stage("phrase grounding", f"up to {max_captions} captions"):
            summary["grounding"] = txt.grounding_part(explainer, data, reference, out, section,
                                                      max_captions=max_captions)
    return [section], summary


def reproduce_section(command: str, settings: dict[str, Any], times: dict[str, float]
                      ) -> Section:
    """The command, every setting, the machine, the stage times and the plugins loaded."""
    import platform

    import torch

    section = Section("Reproduce", "reproduce")
    section.para("The same run:")
    section.code(command)
    section.para("Settings:")
    section.code(json.dumps(settings, indent=2, default=str))
    section.para(f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
                 f"{torch.__version__}, Python {platform.python_version()}. Times (s):")
    section.table([{"stage": k, "seconds": v} for k, v in times.items()], digits=1)
    section.para("Plugins loaded (<code>reid-explain plugins</code>):")
    section.table([{"plugin": p["name"], "source": p["source"],
                    "provides": "; ".join(f"{k}: {', '.join(v)}"
                                          for k, v in p["provides"].items())}
                   for p in plugin_manager.list_plugins()])
    return section


def image_report(explainer: ExplainerLike, data: ReidEvalSet | None, out: str | Path,
                 methods: Sequence[str] | None = None, n_queries: int = 100,
                 attributes: pd.DataFrame | None = None, command: str = "",
                 settings: dict[str, Any] | None = None, captions: Any = None,
                 **options: Any) -> Path:
    """Write the report of a host to ``out`` (whole or not at all): the image ReID sections on
    ``data`` and, for a CLIP-style host given ``captions`` (a ``TextImageData``, e.g. from a
    CUHK-PEDES JSON), the text-to-image section."""
    from .._util.io import atomic_path, strict_json
    from ..errors import InputError

    if data is None and captions is None:
        raise InputError("a report needs image ReID data, captions, or both")
    start = time.perf_counter()
    times: dict[str, float] = {}
    summary: dict[str, Any] = {}
    sections: list[Section] = []
    names = []
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        if data is not None:
            sections, summary["image"] = image_sections(explainer, data, tmp, methods,
                                                        n_queries, attributes, times=times,
                                                        **options)
            names.append(data.name)
        if captions is not None:
            parts, summary["text"] = text_sections(explainer, captions, tmp, methods,
                                                   max_captions=n_queries, times=times,
                                                   word_captions=n_queries)
            sections += parts
            names.append(f"{len(captions)} captions")
        times["total"] = round(time.perf_counter() - start, 1)
        settings = {"data": " + ".join(names), "methods": list(methods) if methods else "all",
                    "queries": n_queries, "code": code_digest(), **(settings or {})}
        summary |= {"settings": settings, "times": times,
                    "plugins": plugin_manager.list_plugins()}
        title = f"{type(explainer.model).__name__} on {' + '.join(names)}"
        text = report_text(title, summary)
        if "image" in summary:
            overview = Section("Overview", "overview")
            ir = summary["image"]["retrieval"]
            tiles = [("image R@1", f"{ir['R1']:.1f}%"), ("image mAP", f"{ir['mAP']:.1f}%")]
            if "text" in summary:
                tiles.append(("text→image R@1", f"{summary['text']['retrieval']['R1']:.1f}%"))
            overview_section(overview, summary["image"], text, tiles, times["total"],
                             f"{type(explainer.model).__name__} explained on "
                             f"{' + '.join(names)}.")
            overview.table([facts(explainer, data, summary)])
            sections.insert(0, overview)
        sections.append(reproduce_section(command or "exp.report(...)", settings, times))
        (tmp / "index.html").write_text(render("reid-explain report", title, sections, summary))
        (tmp / "summary.json").write_text(strict_json(summary))
        (tmp / "summary.txt").write_text(text)
    return Path(out)


def facts(explainer: ExplainerLike, data: ReidEvalSet, summary: dict[str, Any]
          ) -> dict[str, Any]:
    """The model and the data in one row: what was explained, on what, against what."""
    adapter = summary["image"]["adapter"]
    model = explainer.model
    reference = summary["image"]["explanations"].get("reference") or {}
    return {"model": type(model).__name__, "adapter": adapter.get("adapter"),
            "spatial layer": adapter.get("layer", "-"), "grid": adapter.get("grid", "-"),
            "parameters (M)": sum(p.numel() for p in model.parameters()) / 1e6,
            "data": data.name, "queries": len(data.query_pids),
            "gallery": len(data.gallery_pids),
            "identities": len(set(data.query_pids.tolist()) | set(data.gallery_pids.tolist())),
            "part masks": "yes" if data.query_masks is not None else "no",
            "image-blind reference": reference.get("name", "-")}


def report_text(title: str, summary: dict[str, Any]) -> str:
    """The report's one-screen ``summary.txt``, laid out as the demo's."""
    lines = [f"reid-explain report: {title}", ""]
    if "image" in summary:
        ir = summary["image"]["retrieval"]
        lines.append(f"image ReID   R@1 {ir['R1']:5.1f}%  mAP {ir['mAP']:5.1f}%  "
                     f"({ir['queries']} queries, {ir['gallery']} gallery)")
    if "text" in summary:
        tr = summary["text"]["retrieval"]
        lines.append(f"text→image   R@1 {tr['R1']:5.1f}%  mAP {tr['mAP']:5.1f}%  "
                     f"({tr['captions']} captions, {tr['images']} images)")
    lines.append("")
    if "image" in summary:
        lines += image_lines(summary["image"])
        if "attributes" in summary["image"]:
            lines.append(attribute_line(summary["image"]["attributes"]))
    if "words" in summary.get("text", {}):
        lines.append(word_line(summary["text"]["words"]))
    lines += ["", times_line(summary["times"])]
    return "\n".join(lines) + "\n"
