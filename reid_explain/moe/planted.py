"""Planted-importance check of the MoSAIC-ReID attribute study on SynthPedes (issue 7, point 2).

SynthPedes plants each attribute's importance for identity as the entropy of its values across
identities (docs/synthpedes.md), in a ``planted_order`` (most identity-separating first).
:func:`planted_order_study` exports such a set in the real formats, loads it with the real
loaders (Market-1501 folders + ``market_attribute.mat``), trains oracle-routed LoRA experts on
the train identities with :func:`~reid_explain.moe.train.train_image_moe`, measures per-query
AP, hit and ΔAP per expert group on query/gallery (:func:`~reid_explain.moe.ablation.
ablation_outcomes`), runs :func:`~reid_explain.attributes.run_study` and compares the study's
ranking with the planted order (Spearman ρ, top-3 overlap).

Which ranking: with a MoE the study's consensus is the **ablation consensus**
(``run_study(..., consensus="ablation")``, see docs/attribute_study.md): the expert groups ranked
by what switching them off costs. The AP/hit consensus answers a different question ("for which
attribute *values* is the model better or worse?"); on SynthPedes it does not follow the planted
entropy order; ``PlantedResult.other`` reports it (and the mean-ΔAP order) beside the
consensus for that reason (docs/results_mosaic.md).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from reid_explain.attributes.causal import agreement
from reid_explain.attributes.study import AttributeStudy, run_study
from reid_explain.moe.ablation import ablation_outcomes
from reid_explain.moe.audit import moe_causal_audit
from reid_explain.moe.routers import predicted_codes

__all__ = ["PlantedResult", "moe_causal_audit", "planted_order_study", "predicted_codes",
           "rank_agreement", "separated_discordance"]


@dataclass
class PlantedResult:
    """A planted-order run: the study, its agreement with the planted order, and costs."""

    planted_order: list[str]
    study: AttributeStudy
    order: list[str]                 # the study's consensus order (see ``consensus``)
    rho: float                       # Spearman ρ between ``order`` and the planted order
    top3: int                        # how many of the planted top 3 are the study's top 3
    consensus: str
    other: dict[str, dict[str, Any]] = field(default_factory=dict)  # the other rankings' ρ/top3
    metrics: dict[str, float] = field(default_factory=dict)         # oracle mAP / rank-1
    seconds: dict[str, float] = field(default_factory=dict)
    causal: dict[str, Any] | None = None  # ``causal=True``: the audits and their agreements

    def summary(self) -> dict[str, Any]:
        return {"planted_order": self.planted_order, "consensus": self.consensus,
                "order": self.order, "rho": round(self.rho, 4), "top3": self.top3,
                "separated_wrong": list(separated_discordance(self.planted_order, self.order)),
                "other": self.other, "metrics": self.metrics, "causal": self.causal,
                "seconds": {k: round(v, 1) for k, v in self.seconds.items()}}


def _same_attributes(planted: Sequence[str], found: Sequence[str]) -> tuple[list, list]:
    """Both orders as lists, refused unless they order the same attributes."""
    planted, found = list(planted), list(found)
    if sorted(planted) != sorted(found):
        raise ValueError(f"orders name different attributes: {sorted(planted)} vs {sorted(found)}")
    return planted, found


def rank_agreement(planted: Sequence[str], found: Sequence[str]) -> tuple[float, int]:
    """Spearman ρ between two orders of the same attributes, and the top-3 overlap."""
    planted, found = _same_attributes(planted, found)
    rho = float(stats.spearmanr([planted.index(a) for a in found], np.arange(len(found)))
                .statistic)
    return rho, len(set(planted[:3]) & set(found[:3]))


def separated_discordance(planted: Sequence[str], found: Sequence[str],
                          steps: int = 3) -> tuple[int, int]:
    """``(discordant, pairs)`` over the pairs planted at least ``steps`` places apart (each
    place ``decay`` = 0.88 times less entropy, so 3 places is >= 1.47x): how often ``found``
    ranks the attribute planted with clearly less identity information above the one with
    more. Adjacent places differ by 12 % of their bits, less than what the renderer's
    visibility of an attribute changes, so their order is not a property the study can owe."""
    planted, found = _same_attributes(planted, found)
    pairs = [(a, b) for i, a in enumerate(planted) for b in planted[i + steps:]]
    return sum(found.index(a) > found.index(b) for a, b in pairs), len(pairs)


def planted_order_study(planted_order: Sequence[str] | None, seed: int = 0, *,
                        root: str | Path | None = None, n_ids: int = 400,
                        images_per_id: int = 6, height: int = 64, width: int = 32,
                        couple: bool = False, depth: int = 2, last_n: int = 2, rank: int = 4,
                        epochs: int = 12, p: int = 8, k: int = 4, lr: float = 3e-3,
                        consensus: str = "ablation", study_options: dict[str, Any] | None = None,
                        threads: int | None = None, host: str = "random",
                        router: bool | str = False, ablation_routing: str = "oracle",
                        router_lr: float = 3e-3, router_epochs: int = 30,
                        router_seeds: Sequence[int] = (), router_ids: int = 1500,
                        causal: bool = False) -> PlantedResult:
    """Export SynthPedes with ``planted_order``, train oracle-routed experts, run the study.

    Defaults keep one run CPU-cheap (400 identities x 6 images, so that the colours alone cannot
    tell the 200 test identities apart and every attribute's experts carry identity; a
    random-initialised, frozen 2-block ViT-Tiny at 64x32, experts rank 4 in both blocks, 12
    epochs of 8x4 batches; 65-80 s per run on one thread of a shared 2-core machine).
    ``couple=False``: independent attributes (SynthPedes' realism coupling would tie clothes and
    hair to gender). ``seed`` seeds the data, the host and the training. ``root``: a folder to
    export into (default: a temporary one, removed afterwards). ``study_options`` go to
    :func:`run_study`.

    ``host``: ``"random"`` (the frozen random ViT-Tiny above) or ``"zoo:NAME"``, a trained zoo
    model's image tower (e.g. ``zoo:clip-synthpedes``), frozen, at its own input size (which
    replaces ``height``/``width``). ``router=True`` trains MoSAIC's deployable alternative to the
    oracle beside the experts, a :class:`~reid_explain.moe.routers.LearnedRouter` on the host's
    expert-free features, and reports its mAP and gap to the oracle.
    ``ablation_routing="learned"`` (needs the router) routes the ablation by the router's
    *predicted* attributes instead of the labels, so the experts a query uses depend on what
    its pixels show, not on the labels the study plants (the less circular check).
    ``router="pixels"`` uses a :class:`~reid_explain.moe.routers.PixelRouter` instead, fit on
    the training split's images first (``router_epochs``, :func:`~reid_explain.moe.train.
    train_router`) and then held fixed while the experts train. ``router_seeds``: SynthPedes
    seeds whose people (``router_ids`` identities each, every split, the same planted order and
    coupling) the pixel router also learns from, as an attribute recogniser is trained on its own
    labelled set: other draws than ``seed``'s, so none is a test identity (the experts still
    train on ``seed``'s training split only). Gender is drawn as body widths, so it takes a
    reader thousands of people to learn (docs/results.md, issue 28).

    ``causal=True`` also runs the causal audit (:func:`moe_causal_audit`) on the trained model,
    routed as the ablation is, and on the host alone (experts off), and measures the
    expert-ablation rankings (mean ΔAP, the study's consensus) against the model's causal
    ranking (:func:`~reid_explain.attributes.causal.agreement`): ``PlantedResult.causal``.
    """
    if router not in (False, True, "features", "pixels"):
        raise ValueError(f"router must be a bool, 'features' or 'pixels', got {router!r}")
    if ablation_routing not in ("oracle", "learned"):
        raise ValueError(f"ablation_routing must be 'oracle' or 'learned', got "
                         f"{ablation_routing!r}")
    if ablation_routing == "learned" and not router:
        raise ValueError("ablation_routing='learned' needs router=True")
    if router_seeds and router != "pixels":
        raise ValueError("router_seeds are people for the pixel router: pass router='pixels'")
    if seed in router_seeds:
        raise ValueError(f"router_seeds must not hold the study's own seed {seed}: its test "
                         "identities would be read by the router")
    import torchvision.transforms as T

    from reid_explain.data.attributes import load_attributes
    from reid_explain.data.datasets import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        ImageReidDataset,
        default_transform,
    )
    from reid_explain.moe.routers import LearnedRouter, PixelRouter
    from reid_explain.moe.train import (
        IdClassifier,
        evaluate_routing,
        load_split,
        train_image_moe,
        train_router,
    )
    from reid_explain.synthpedes.export import export_synthpedes
    from reid_explain.synthpedes.identities import resolve_planted_order
    from reid_explain.synthpedes.planning import SynthConfig
    from reid_explain.training.session import attach

    model, size, stats_ = _planted_host(host, (height, width), depth, seed)
    height, width = size

    planted = list(resolve_planted_order(planted_order))
    seconds: dict[str, float] = {}
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    tmp = tempfile.TemporaryDirectory(prefix="planted_") if root is None else None
    try:
        t = time.perf_counter()
        base = Path(tmp.name if tmp is not None else root) / "synthpedes"
        config = SynthConfig(n_ids=n_ids, images_per_id=images_per_id, seed=seed, height=height,
                             width=width, planted_order=tuple(planted), couple=couple)
        export_synthpedes(base, config, formats=("market", "attributes"))
        table = load_attributes(base / "market1501" / "market_attribute.mat")
        transform = T.Compose([T.Resize((height, width)), T.ToTensor(), T.Normalize(*stats_)]) \
            if stats_ is not None else default_transform(height, width)
        splits = {name: load_split(ImageReidDataset(base, name, transform=transform,
                                                    attributes=table))
                  for name in ("train", "query", "gallery")}
        router_split = splits["train"]
        for extra in router_seeds:  # more people for the router alone, none of them tested
            folder = base.parent / f"router_people_{extra}"
            export_synthpedes(folder, replace(config, seed=extra, n_ids=router_ids),
                              formats=("market", "attributes"))
            extra_table = load_attributes(folder / "market1501" / "market_attribute.mat")
            parts = [load_split(ImageReidDataset(folder, name, transform=transform,
                                                 attributes=extra_table))
                     for name in ("train", "query", "gallery")]
            # labelled people only: a gallery's distractors carry codes of -1 (no attributes)
            labelled = [{key: q[key][(q["attributes"] >= 0).all(dim=1)]
                         for key in ("img", "attributes")} for q in parts]
            router_split = {key: torch.cat([router_split[key]] + [q[key] for q in labelled])
                            for key in ("img", "attributes")}
        seconds["data"] = time.perf_counter() - t

        session = attach(model, modifications=["lora_moe"],
                         lora_moe={"schema": "market1501", "last_n": last_n, "rank": rank})
        moe = session.modification("lora_moe")
        try:
            with torch.no_grad(), moe.bypass():
                dim = int(session.adapter.embed_image(torch.zeros(1, 3, height, width)).shape[1])
            t = time.perf_counter()
            torch.manual_seed(seed)
            classifier = IdClassifier(dim, int(splits["train"]["pid"].max()) + 1)
            learned = None
            if router == "pixels":
                learned = PixelRouter(moe.layout)
                train_router(moe, learned, router_split, epochs=router_epochs, seed=seed)
            elif router:
                learned = LearnedRouter(moe.layout, dim)
            train_image_moe(moe, splits["train"], classifier,
                            None if router == "pixels" else learned, epochs=epochs, p=p, k=k,
                            lr=lr, router_lr=router_lr, seed=seed)
            seconds["train"] = time.perf_counter() - t
            t = time.perf_counter()
            q, g = splits["query"], splits["gallery"]
            if learned is not None:
                learned.eval()
            q_codes, g_codes = (q["attributes"], g["attributes"]) if ablation_routing == \
                "oracle" else (predicted_codes(moe, learned, q["img"]),
                               predicted_codes(moe, learned, g["img"]))
            outcomes = ablation_outcomes(moe, q["img"], g["img"], q_codes, g_codes, q["pid"],
                                         g["pid"], q["camid"], g["camid"])
            routings = ("oracle", "learned:hard", "learned:soft", "none") if router \
                else ("oracle", "none")
            metrics = evaluate_routing(moe, q, g, router=learned, routings=routings)
            seconds["ablation"] = time.perf_counter() - t
            if causal:
                t = time.perf_counter()
                mean, std = stats_ if stats_ is not None else (IMAGENET_MEAN, IMAGENET_STD)
                audits = {"model": moe_causal_audit(moe, config, mean, std,
                                                    router=learned if ablation_routing ==
                                                    "learned" else None, seed=seed),
                          "host": moe_causal_audit(moe, config, mean, std, experts=False,
                                                   seed=seed)}
                seconds["causal"] = time.perf_counter() - t
        finally:
            session.detach()
        t = time.perf_counter()
        options = {"n_estimators": 50, "n_splits": 3, "n_repeats": 3, "random_state": seed,
                   **(study_options or {})}
        study = run_study(outcomes, table, split="test", hit="hit", consensus=consensus,
                          **options)
        seconds["study"] = time.perf_counter() - t
    finally:
        if tmp is not None:
            tmp.cleanup()
        torch.set_num_threads(previous_threads)
    rho, top3 = rank_agreement(planted, study.order)
    rankings = {"responses": study.response_ranking["attribute"].tolist(),
                "mean_delta_ap": (None if study.delta_ranking is None
                                  else study.delta_ranking["group"].tolist())}
    other: dict[str, dict[str, Any]] = {}
    for name, found in rankings.items():
        if found is not None and sorted(found) == sorted(planted):
            r, t3 = rank_agreement(planted, found)
            other[name] = {"rho": round(r, 4), "top3": t3, "order": found}
    summary = {"oracle_mAP": metrics["oracle"]["mAP"], "oracle_rank1": metrics["oracle"]["rank1"],
               "none_mAP": metrics["none"]["mAP"]}
    for routing in ("learned:hard", "learned:soft"):
        if routing in metrics:
            summary[f"{routing}_mAP"] = metrics[routing]["mAP"]
            summary[f"{routing}_rank1"] = metrics[routing]["rank1"]
    for routing, gain in metrics.get("versus_host", {}).items():
        summary[f"{routing}_gain_over_host"] = [gain["ap_gain"], gain["low"], gain["high"]]
    if "router_accuracy" in metrics:
        summary.update({f"router_accuracy.{k}": v for k, v in metrics["router_accuracy"].items()})
        summary["router_people"] = {"seeds": list(router_seeds), "images": len(router_split["img"])}
    causal_summary = None
    if causal:
        causal_summary = {name: audit.to_json() for name, audit in audits.items()}
        observed = {"ablation_consensus": study.order, **({"mean_delta_ap": rankings[
            "mean_delta_ap"]} if rankings["mean_delta_ap"] is not None else {}),
            "planted": planted}
        causal_summary["agreement"] = {name: agreement(audits["model"].ranking, order)
                                       for name, order in observed.items()}
    return PlantedResult(planted, study, study.order, rho, top3, consensus, other, summary,
                         seconds, causal_summary)


def _planted_host(host: str, size: tuple[int, int], depth: int, seed: int
                  ) -> tuple[torch.nn.Module, tuple[int, int], tuple | None]:
    """The host, its input size and its normalisation (None: ImageNet's)."""
    if host == "random":
        import timm

        torch.manual_seed(seed)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0,
                                  img_size=size, depth=depth).eval()
        return model, size, None
    if host.startswith("zoo:"):
        from reid_explain.training.text_image import OPENAI_MEAN, OPENAI_STD
        from reid_explain.zoo import card, load

        name = host.partition(":")[2]
        model = load(name)
        architecture = card(name)["architecture"]
        if "image_size" not in architecture:
            raise ValueError(f"host {host!r}: the planted study needs a zoo model with a ViT "
                             "image tower (an open_clip CLIP)")
        return model, tuple(architecture["image_size"]), (OPENAI_MEAN, OPENAI_STD)
    raise ValueError(f"host must be 'random' or 'zoo:NAME', got {host!r}")
