"""``reid-explain demo``: the zoo's trained models explained end to end, as an HTML report.

It loads the SynthPedes-trained zoo models (a torchreid OSNet for image ReID, a tiny open_clip
CLIP for text-to-image ReID), renders held-out SynthPedes identities with their part masks, and
reports: retrievals with match marks; maps of every method on both images next to the true
person and part masks; faithfulness (counterfactual masking with CIs, deletion/insertion
curves) beside random maps; the model-randomisation check; per-phrase grounding beside an
image-blind prior; and the attribute study. Output: ``index.html`` with ``img/`` beside it,
``summary.json`` and ``summary.txt``, written whole or not at all.
"""

from __future__ import annotations

import io
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._util.io import atomic_path, strict_json
from .._util.provenance import code_digest
from ..report.html import Section, render
from ..report.overview import (
    attribute_line,
    image_lines,
    overview_section,
    times_line,
    word_line,
)

#: sizes of the run: (test identities, image queries explained, captions scored)
SIZES = {"quick": {"ids": 30, "queries": 40, "captions": 48, "words": 40, "sanity": 4,
                   "trees": 50, "audit_ids": 30},
         "full": {"ids": 100, "queries": 100, "captions": 300, "words": 100, "sanity": 8,
                  "trees": 100, "audit_ids": 50}}
IMAGE_MODEL, TEXT_MODEL = "osnet-synthpedes", "clip-synthpedes"
#: the crops the demo explains: detector-like boxes (Market-1501's own are DPM detections),
#: where a map drawn without the image no longer finds the person nearly every time; on the
#: crops as rendered a location prior reaches 0.91-0.95 person energy and pointing, so no
#: verdict there can say whether a map looked (docs/results.md, issue 25)
DEMO_CROPS = "misaligned"


def demo_data(seed: int | None, n_ids: int, crops: str = "aligned") -> dict[str, Any]:
    """Test identities of the zoo's SynthPedes set (``seed=None``), or of a fresh set drawn
    with ``seed`` (new identities, none trained on); validation identities as the location
    prior's reference; the identities' attribute table in the official ``.mat`` format."""
    import scipy.io

    from ..data.attributes import attributes_from_mat_dict
    from ..synthpedes.export import attribute_mat_bytes
    from ..synthpedes.planning import SynthConfig, plan
    from ..zoo.data import render_splits
    from ..zoo.registry import ZOO_DATA

    config = dict(ZOO_DATA) | ({} if seed is None else {"seed": seed}) | (
        {} if crops == "aligned" else {"crops": crops})
    splits = render_splits(config, with_masks=True, max_ids={"test": n_ids, "val": 40},
                           splits=("val", "test"))
    synth = plan(SynthConfig(**config))
    test_ids = sorted(set(splits["test"].pids.tolist()))
    identities = [synth.identity_by_pid[p] for p in test_ids]
    mat = scipy.io.loadmat(io.BytesIO(attribute_mat_bytes([], identities)))
    attributes = attributes_from_mat_dict(mat, source="SynthPedes market_attribute.mat")
    return {"config": config, "splits": splits, "attributes": attributes}


def image_eval_set(split: Any, mean: Sequence[float], std: Sequence[float],
                   reference_split: Any = None) -> Any:
    """The test identities as a ``ReidEvalSet``; with ``reference_split`` (validation
    identities, never scored) the image-blind reference is learnt from its masks."""
    from ..data.schema import PARTS
    from ..evaluation.protocol import ReidEvalSet
    from ..evaluation.references import choose_reference

    q, g = split.is_query, ~split.is_query
    images = split.tensor(mean, std)
    reference = None
    if reference_split is not None and reference_split.masks is not None:
        reference = choose_reference(reference_split.masks, reference_split.pids,
                                     source="SynthPedes validation identities' masks")
    return ReidEvalSet(query=images[torch.as_tensor(q)], query_pids=split.pids[q],
                       query_camids=split.camids[q], gallery=images[torch.as_tensor(g)],
                       gallery_pids=split.pids[g], gallery_camids=split.camids[g],
                       query_masks=torch.from_numpy(split.masks[q]), part_names=PARTS,
                       gallery_masks=torch.from_numpy(split.masks[g]),
                       name="SynthPedes test identities", reference=reference)


def models_section(out: Path) -> tuple[Section, dict[str, Any]]:
    from ..report import figures
    from ..zoo import card

    section = Section("Models", "models")
    cards = {name: card(name) for name in (IMAGE_MODEL, TEXT_MODEL)}
    section.para("Both models come from the package's zoo (<code>reid_explain.zoo.load</code>): "
                 "trained from scratch on SynthPedes with their plain objectives and no "
                 "explainability plugin, shipped as safetensors. Their test split holds "
                 "identities never seen in training.")
    section.table([{"model": n, "family": c["family"], "task": c["task"],
                    "train ids": c["data"]["train_ids"], "test ids": c["data"]["test_ids"],
                    "steps": c["training"]["steps_run"],
                    "minutes": c["training"]["wall_seconds"] / 60,
                    "test R@1": c["test"]["R1"], "test mAP": c["test"]["mAP"],
                    "target R@1": c["targets"].get("R1"), "target met": c["target_met"],
                    "MB": c["weights_bytes"] / 1e6}
                   for n, c in cards.items()], digits=1)
    panels = {n: {"validation R@1": ([p["step"] for p in c["curve"]],
                                     [p["val_R1"] for p in c["curve"]])}
              for n, c in cards.items()}
    fig = figures.curves({f"{n}: validation R@1 (%)": {k: tuple(map(list, v))
                                                        for k, v in lines.items()}
                          for n, lines in panels.items()}, out / "img" / "learning_curves.png",
                         xlabel="training step", ylabel="R@1 (%)")
    section.figure(fig, "Learning curves on validation identities (never trained on).", out)
    return section, cards


def run_demo(out: str | Path = "reid_explain_output/demo", methods: Sequence[str] | None = None,
             seed: int | None = None, quick: bool = False, top_k: int = 5,
             crops: str = DEMO_CROPS) -> int:
    from ..explain.explainer import explainify
    from ..plugin_api import manager as plugin_manager
    from ..report import image_sections, reproduce_section, text_sections
    from ..zoo import load
    from ..zoo.data import text_image_data

    for name in methods or ():
        plugin_manager.get("attributions", name)  # unknown names fail before any work
    size = SIZES["quick" if quick else "full"]
    times: dict[str, float] = {}
    start = time.perf_counter()

    torch.manual_seed(0)
    image_model, text_model = load(IMAGE_MODEL), load(TEXT_MODEL)
    data = demo_data(seed, size["ids"], crops)
    test, val = data["splits"]["test"], data["splits"]["val"]
    times["load models and render data"] = round(time.perf_counter() - start, 1)
    settings = {"quick": quick, "seed": seed, "crops": crops, "data": data["config"],
                "sizes": size,
                "methods": list(methods) if methods else "all", "top_k": top_k,
                "code": code_digest()}  # which code and libraries made it
    summary: dict[str, Any] = {"settings": settings}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        overview = Section("Overview", "overview")
        models, cards = models_section(tmp)
        with explainify(image_model) as exp:
            evalset = image_eval_set(test, exp.adapter.pixel_mean, exp.adapter.pixel_std,
                                     reference_split=val)
            image_parts, summary["image"] = image_sections(
                exp, evalset, tmp, methods, n_queries=size["queries"],
                attributes=data["attributes"], sanity_images=size["sanity"],
                trees=size["trees"], top_k=top_k, times=times,
                causal={"config": data["config"], "max_ids": size["audit_ids"]})
            summary["image"]["model"] = IMAGE_MODEL
        with explainify(text_model) as exp:
            text_data = text_image_data(test, exp.adapter.pixel_mean, exp.adapter.pixel_std)
            reference = text_image_data(val, exp.adapter.pixel_mean, exp.adapter.pixel_std)
            text_parts, summary["text"] = text_sections(
                exp, text_data, tmp, methods, reference=reference,
                max_captions=size["captions"], top_k=top_k, times=times,
                word_captions=size["words"])
            summary["text"]["model"] = TEXT_MODEL
        summary["attributes"] = summary["image"].pop("attributes")
        summary["times"] = times | {"total": round(time.perf_counter() - start, 1)}
        summary["plugins"] = plugin_manager.list_plugins()
        text = summary_text(summary, cards)
        overview_blocks(overview, summary, text)
        command = "reid-explain demo" + (" --quick" if quick else "") + (
            f" --seed {seed}" if seed is not None else "") + (
            f" --crops {crops}" if crops != DEMO_CROPS else "") + (
            f" --methods {' '.join(methods)}" if methods else "")
        sections = [overview, models, *image_parts[:3], *text_parts, *image_parts[3:],
                    reproduce_section(command, settings, summary["times"])]
        (tmp / "index.html").write_text(render(
            "reid-explain demo: trained SynthPedes models explained",
            f"{IMAGE_MODEL} (image ReID) and {TEXT_MODEL} (text-to-image ReID) on held-out "
            "SynthPedes identities with ground-truth part masks", sections, summary))
        (tmp / "summary.json").write_text(strict_json(summary))
        (tmp / "summary.txt").write_text(text)
    print(text)
    print(f"wrote {Path(out) / 'index.html'} (open it in a browser)")
    return 0


def summary_text(summary: dict[str, Any], cards: dict[str, Any]) -> str:
    """The one-screen text summary printed at the end."""
    ir, tr = summary["image"]["retrieval"], summary["text"]["retrieval"]
    crops = summary["settings"]["crops"]
    lines = ["reid-explain demo: trained SynthPedes zoo models on held-out identities", "",
             f"image ReID   {IMAGE_MODEL:18s} R@1 {ir['R1']:5.1f}%  mAP {ir['mAP']:5.1f}%  "
             f"({ir['queries']} queries, {ir['gallery']} gallery, {crops} crops; card test "
             f"R@1 {cards[IMAGE_MODEL]['test']['R1']:.1f}% on aligned crops)",
             f"text→image   {TEXT_MODEL:18s} R@1 {tr['R1']:5.1f}%  mAP {tr['mAP']:5.1f}%  "
             f"({tr['captions']} captions, {tr['images']} images; card test R@1 "
             f"{cards[TEXT_MODEL]['test']['R1']:.1f}% on aligned crops)", ""]
    lines += image_lines(summary["image"])
    grounding = summary["text"]["grounding"]
    g, verdicts = grounding["scores"], grounding.get("verdicts", {})
    methods = [k for k in g if k in verdicts] or [
        k for k in g if not k.startswith(("location", "sharpened"))]
    best = max(methods, key=lambda k: g[k]["energy"])
    chance = grounding["chance"]["energy"]
    line = f"phrase grounding energy: best {best} {g[best]['energy']:.3f}"
    if best in verdicts:
        from ..report.text_section import REFERENCE

        v = verdicts[best]
        reference = v.get("reference", g[REFERENCE]["energy"])  # on the same phrases
        line += (f", image-blind reference (per-part sharpened prior) "
                 f"{reference:.3f}: {v['diff']:+.3f} [{v['diff_low']:+.3f}, "
                 f"{v['diff_high']:+.3f}], beats it on {v['parts_beaten']}/{v['parts']} parts")
    lines.append(line + f"; chance {chance:.3f}")
    if "words" in summary["text"]:
        lines.append(word_line(summary["text"]["words"]))
    lines.append(attribute_line(summary["attributes"]))
    lines += ["", times_line(summary["times"])]
    return "\n".join(lines) + "\n"


def overview_blocks(section: Section, summary: dict[str, Any], text: str) -> None:
    ir, tr = summary["image"]["retrieval"], summary["text"]["retrieval"]
    overview_section(section, summary["image"], text,
                     [("image R@1", f"{ir['R1']:.1f}%"), ("image mAP", f"{ir['mAP']:.1f}%"),
                      ("text→image R@1", f"{tr['R1']:.1f}%")], summary["times"]["total"],
                     "two models trained on SynthPedes (a synthetic pedestrian benchmark that "
                     "knows where every body part is) explained on identities they never saw. "
                     "Because the ground truth is known, the maps are checked against true "
                     "person and part masks, not against themselves.")
