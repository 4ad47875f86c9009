"""InterPartAbility in its own regime: a pre-trained CLIP fine-tuned with the plugins, measured
against the strongest image-blind reference.

Protocol (docs/interpartability.md, "Fine-tuned regime"):

- **Start** from the zoo's pre-trained tiny CLIP (``clip-synthpedes``), as the paper starts
  from CLIP.
- **Data**: a SynthPedes set the pre-training never saw (another seed, so other identities),
  split so that validation and test identities wear garment/colour combinations no fine-tuning
  identity wears (:func:`reid_explain.zoo.data.heldout_pid_splits`).
- **Variants**: baseline (IRRA's SDM only), +PPIM, +PPIM+constraint, and +PPIM+constraint
  without position keys and values; the same steps and seeds for each.
- **Validation decides** every choice: each run's best map method, the prior's sharpening
  power, the prior/baseline combination, the strongest image-blind reference. The test split
  is scored once, with those choices.
- **References and controls** on the test split: the location prior (each part's mean training
  mask), the prior sharpened to its best validation power, the prior combined with the
  baseline's maps, each run's maps scored on another image's masks (image swap), and per-part
  chance (area share).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._util.io import atomic_write_text, strict_json
from ..evaluation.phrase_grounding import (
    PhraseMaps,
    collect_phrase_maps,
    maps_counterfactual_gap,
    prior_grid,
    prior_phrase_maps,
    score_phrase_maps,
)

#: PPIM as chosen on validation (seeds 0-1, docs/results.md, issue 26): MaskCLIP's value
#: embeddings of the last block as its keys (energy of its own maps 0.26-0.30 against 0.11-0.13
#: for the patch embeddings, and 0.05-0.06 for block 0's tokens without the next two), the
#: attention sharpened over the first 90 of 240 steps, and the whole image as a phrase's negative
PPIM_OPTIONS = {"weight": 1.0, "patch_block": "value", "position_frequencies": 4,
                "position_values": True, "temperature_warmup": 90,
                "whole_image_negative": True}
CONSTRAINT_OPTIONS = {"weight": 1.0, "blocks": [0], "include_phrase_map": True,
                      "phrase_map_weight": 8.0}
NO_POSITION = {"position_frequencies": 0, "position_values": False}

#: variant -> (plugin losses, PPIM option overrides)
VARIANTS: dict[str, tuple[tuple[str, ...], dict[str, Any]]] = {
    "pretrained": ((), {}),  # the zoo model, not fine-tuned: where every variant starts
    "baseline": ((), {}),
    "ppim": (("ppim",), {}),
    "ppim+constraint": (("ppim", "attention_constraint"), {}),
    "ppim+constraint-nopos": (("ppim", "attention_constraint"), NO_POSITION),
}
MEASURES = ("energy", "pointing", "gap")


@dataclass
class StudyConfig:
    """Everything the study's numbers depend on (written into its output)."""

    model: str = "clip-synthpedes"
    data: dict[str, Any] = field(default_factory=lambda: {
        "n_ids": 600, "images_per_id": 6, "seed": 15, "height": 128, "width": 64,
        "train_fraction": 0.75, "val_fraction": 0.1, "captions_per_image": 2})
    test_share: float = 0.25
    val_share: float = 0.15
    split_seed: int = 0
    steps: int = 240
    batch_size: int = 32
    lr: float = 1e-4
    plugin_lr_scale: float = 30.0
    ppim: dict[str, Any] = field(default_factory=lambda: dict(PPIM_OPTIONS))
    constraint: dict[str, Any] = field(default_factory=lambda: dict(CONSTRAINT_OPTIONS))
    methods: tuple[str, ...] = ("similarity", "gradcam", "attention_relevance", "rollout")
    val_captions: int = 300
    test_captions: int = 800
    prior_powers: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 24.0, 32.0)
    #: prior + baseline maps: ("product", p) = prior^p x map; ("sum", w) = w prior + (1-w) map
    combinations: tuple[tuple[str, float], ...] = (
        ("product", 0.5), ("product", 1.0), ("product", 2.0), ("product", 4.0),
        ("sum", 0.25), ("sum", 0.5), ("sum", 0.75))
    fraction: float = 0.2
    device: str = "cpu"


@dataclass
class Splits:
    train: Any
    val: Any
    test: Any
    heldout: dict[str, list[str]]
    grid: tuple[int, int]


def load_splits(config: StudyConfig) -> Splits:
    """Render the fine-tuning set's train / validation / test splits (with part masks)."""
    from ..training.text_image import OPENAI_MEAN, OPENAI_STD
    from ..zoo.data import heldout_pid_splits, render_splits, text_image_data
    from ..zoo.registry import card

    pid_splits, heldout = heldout_pid_splits(config.data, config.test_share, config.val_share,
                                             config.split_seed)
    rendered = render_splits(config.data, with_masks=True, pid_splits=pid_splits)
    data = {k: text_image_data(v, OPENAI_MEAN, OPENAI_STD) for k, v in rendered.items()}
    vision = card(config.model)["architecture"]
    size, patch = vision["image_size"], vision["patch_size"]
    return Splits(data["train"], data["val"], data["test"], heldout,
                  (size[0] // patch, size[1] // patch))


def finetune(variant: str, seed: int, splits: Splits, config: StudyConfig
             ) -> tuple[torch.nn.Module, Any, list[dict[str, float]]]:
    """The zoo model fine-tuned as ``variant`` (``pretrained``: loaded, not trained)."""
    from ..training.text_image import TrainConfig, train_text_image
    from ..zoo import load

    losses, ppim_overrides = VARIANTS[variant]
    model = load(config.model, device=config.device)
    if variant == "pretrained":
        return model, None, []
    train = TrainConfig(epochs=config.steps, max_steps=config.steps, batch_size=config.batch_size,
                        lr=config.lr, plugin_lr_scale=config.plugin_lr_scale, seed=seed,
                        losses=losses, device=config.device,
                        loss_options={"ppim": {**config.ppim, **ppim_overrides},
                                      "attention_constraint": dict(config.constraint)})
    history, session = train_text_image(model, splits.train, train)
    return model, session, history


def image_swap(data: Any, seed: int) -> np.ndarray:
    """Image row -> an image of another identity (identities paired in a random cycle): the
    image-swap control's pairing."""
    rng = np.random.default_rng(seed)
    pids = np.unique(data.image_pids)
    if len(pids) < 2:
        raise ValueError("the image-swap control needs at least two identities")
    cycle = rng.permutation(pids)
    partner = dict(zip(cycle.tolist(), np.roll(cycle, -1).tolist(), strict=True))
    rows_of = {p: np.flatnonzero(data.image_pids == p) for p in pids.tolist()}
    return np.array([rng.choice(rows_of[partner[int(p)]]) for p in data.image_pids])


def _scores(result: dict[str, Any]) -> dict[str, Any]:
    """A score dict without its per-phrase records (kept small for the JSON)."""
    return {k: v for k, v in result.items() if k != "records"}


def combine(prior: PhraseMaps, maps: PhraseMaps, how: str, value: float) -> PhraseMaps:
    """The prior combined with a model's maps for the same captions (each map scaled to [0, 1]
    first, so neither dominates by scale)."""

    def unit(x: Tensor) -> Tensor:
        x = x.clamp_min(0)
        top = x.flatten(1).max(dim=1).values.clamp_min(1e-12)
        return x / top[:, None, None]

    def fn(i: int, m: Tensor) -> Tensor:
        p = prior.maps[i]
        if p is None:
            return m
        if how == "product":
            return unit(p).pow(value) * unit(m)
        return value * unit(p) + (1 - value) * unit(m)

    return maps.mapped(f"prior {how} {value:g} + {maps.method}", fn)


def run_one(variant: str, seed: int, splits: Splits, config: StudyConfig,
            references: dict[str, Any], log: Callable[[str], None] = print,
            score_test: bool = True) -> dict[str, Any]:
    """Fine-tune, choose the map method on validation, score it once on the test split
    (``score_test=False``: validation only, for choosing settings)."""
    from ..explain.explainer import explainify
    from ..training.text_image import retrieval_metrics

    start = time.perf_counter()
    model, session, history = finetune(variant, seed, splits, config)
    train_seconds = time.perf_counter() - start
    ppim = session.losses.get("ppim") if session is not None else None
    methods = config.methods + (("ppim",) if ppim is not None else ())
    out: dict[str, Any] = {"variant": variant, "seed": seed,
                           "train_seconds": round(train_seconds, 1), "steps": len(history),
                           "final_loss": history[-1]["loss"] if history else None,
                           "retrieval": retrieval_metrics(model, splits.test) if score_test
                           else None,
                           "retrieval_val": retrieval_metrics(model, splits.val)}
    with explainify(model) as exp:
        val_maps = {m: collect_phrase_maps(exp, splits.val, m, ppim=ppim,
                                           max_captions=config.val_captions) for m in methods}
        val = {m: _scores(score_phrase_maps(splits.val, v)) for m, v in val_maps.items()}
        best = max(methods, key=lambda m: val[m]["energy"])
        out.update({"val": val, "best_method": best})
        if not score_test:  # choosing settings: the test split stays untouched
            out.pop("retrieval")
            out["seconds"] = round(time.perf_counter() - start, 1)
            log(f"{variant:22s} seed {seed}: val R@1 {out['retrieval_val']['R1']:.2f} | best "
                f"{best} | val energy {val[best]['energy']:.3f} pointing "
                f"{val[best]['pointing']:.3f} | {out['seconds']:.0f} s")
            return out
        test_maps = collect_phrase_maps(exp, splits.test, best, ppim=ppim,
                                        max_captions=config.test_captions)
        test = score_phrase_maps(splits.test, test_maps)
        swap = score_phrase_maps(splits.test, test_maps,
                                 mask_image=image_swap(splits.test, seed))
        gap = maps_counterfactual_gap(exp, splits.test, test_maps, config.fraction, seed=seed)
        prior_gaps = {name: maps_counterfactual_gap(exp, splits.test, maps, config.fraction,
                                                    seed=seed)
                      for name, maps in references["test_maps"].items()}
        out.update({"test": _scores(test),
                    "image_swap": _scores(swap), "gap": gap, "reference_gaps": prior_gaps})
        if ppim is not None:  # the PPIM head's own maps, faithfulness beside plausibility
            head_maps = test_maps if best == "ppim" else collect_phrase_maps(
                exp, splits.test, "ppim", ppim=ppim, max_captions=config.test_captions)
            out["ppim_maps"] = {
                "test": _scores(score_phrase_maps(splits.test, head_maps)),
                "gap": gap if best == "ppim" else maps_counterfactual_gap(
                    exp, splits.test, head_maps, config.fraction, seed=seed)}
        if variant == "baseline":  # the prior combined with the baseline's maps
            choice = max(config.combinations, key=lambda c: score_phrase_maps(
                splits.val, combine(references["val_maps"]["prior"], val_maps[best], *c)
            )["energy"])
            mixed = combine(references["test_maps"]["prior"], test_maps, *choice)
            out["prior_with_baseline"] = {
                "choice": list(choice), "test": _scores(score_phrase_maps(splits.test, mixed)),
                "gap": maps_counterfactual_gap(exp, splits.test, mixed, config.fraction,
                                               seed=seed)}
    out["seconds"] = round(time.perf_counter() - start, 1)
    log(f"{variant:22s} seed {seed}: R@1 {out['retrieval']['R1']:.2f} | best (val) {best} | "
        f"test energy {test['energy']:.3f} pointing {test['pointing']:.3f} "
        f"gap {gap['gap']:.3f} | swap energy {swap['energy']:.3f} | {out['seconds']:.0f} s")
    return out


def build_references(splits: Splits, config: StudyConfig) -> dict[str, Any]:
    """The image-blind references, with the prior's power chosen on validation."""
    val_maps = {power: prior_phrase_maps(splits.train, splits.val, splits.grid,
                                         config.val_captions, power)
                for power in {1.0, *config.prior_powers}}
    val_scores = {power: _scores(score_phrase_maps(splits.val, val_maps[power]))
                  for power in config.prior_powers}
    best_power = max(config.prior_powers, key=lambda p: val_scores[p]["energy"])
    test_maps = {"prior": prior_phrase_maps(splits.train, splits.test, splits.grid,
                                            config.test_captions),
                 "sharpened prior": prior_phrase_maps(splits.train, splits.test, splits.grid,
                                                      config.test_captions, best_power)}
    test = {k: _scores(score_phrase_maps(splits.test, v)) for k, v in test_maps.items()}
    val_choice = {"prior": val_scores[1.0] if 1.0 in val_scores else None,
                  "sharpened prior": val_scores[best_power]}
    strongest = max((k for k, v in val_choice.items() if v is not None),
                    key=lambda k: val_choice[k]["energy"])
    return {"prior_power_val": {str(p): s["energy"] for p, s in val_scores.items()},
            "best_power": best_power, "strongest": strongest, "test": test,
            "test_maps": test_maps,
            "val_maps": {"prior": val_maps[1.0]},
            "prior_grid": prior_grid(splits.train, splits.grid).tolist()}


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t interval over seeds."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return mean, mean - half, mean + half


def interval(values: Sequence[float]) -> dict[str, float]:
    """``{"mean", "low", "high"}``: :func:`t_interval` as a dict."""
    mean, low, high = t_interval(values)
    return {"mean": mean, "low": low, "high": high}


def measure(run: dict[str, Any], name: str) -> float:
    return run["gap"]["gap"] if name == "gap" else run["test"][name]


def reference_value(run: dict[str, Any], references: dict[str, Any], name: str) -> float:
    """The best image-blind reference's value on ``name``: the higher of the prior and the
    sharpened prior on the test split (conservative: the maximum favours the reference, not
    the method). For the gap, both priors' maps are masked on this run's own model."""
    if name == "gap":
        return max(v["gap"] for v in run["reference_gaps"].values())
    return max(v[name] for v in references["test"].values())


def reference_part(references: dict[str, Any], part: str) -> dict[str, float]:
    """The best image-blind reference's energy on one part (and the part's n and chance)."""
    rows = [v["by_part"][part] for v in references["test"].values() if part in v["by_part"]]
    best = max(rows, key=lambda r: r["energy"])
    return {"n": best["n"], "energy": best["energy"], "chance": best["chance"]}


def summarise(runs: list[dict[str, Any]], references: dict[str, Any]) -> dict[str, Any]:
    """Per variant: per-seed values, image-dependent share (minus the best image-blind
    reference, :func:`reference_value`), gains over the baseline, per part; means with
    t-intervals over seeds."""
    by_variant: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        by_variant.setdefault(r["variant"], []).append(r)
    base = {r["seed"]: r for r in by_variant.get("baseline", [])}
    strongest = references["strongest"]
    summary: dict[str, Any] = {"strongest_reference": strongest, "variants": {}}
    for variant, rows in by_variant.items():
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rows],
                                 "best_methods": [r["best_method"] for r in rows]}
        r1 = [r["retrieval"]["R1"] for r in rows]
        entry["R1"] = {"per_seed": r1, "mean": float(np.mean(r1))}
        if base and variant != "baseline":
            diff = [r["retrieval"]["R1"] - base[r["seed"]]["retrieval"]["R1"] for r in rows
                    if r["seed"] in base]
            entry["R1"]["minus_baseline"] = interval(diff)
        for name in MEASURES:
            values = [measure(r, name) for r in rows]
            share = [measure(r, name) - reference_value(r, references, name) for r in rows]
            item = {"per_seed": values, "mean": float(np.mean(values)),
                    "image_dependent": {"per_seed": share,
                                        **interval(share)}}
            if base and variant != "baseline":
                gain = [measure(r, name) - measure(base[r["seed"]], name) for r in rows
                        if r["seed"] in base]
                item["gain_over_baseline"] = {"per_seed": gain, **interval(gain)}
            entry[name] = item
        swap = [r["image_swap"]["energy"] for r in rows]
        own_minus_swap = [r["test"]["energy"] - r["image_swap"]["energy"] for r in rows]
        entry["image_swap_energy"] = {"per_seed": swap, "mean": float(np.mean(swap)),
                                      "own_minus_swap": {"per_seed": own_minus_swap,
                                                         **interval(own_minus_swap)}}
        parts: dict[str, Any] = {}
        for part in references["test"][strongest]["by_part"]:
            ref = reference_part(references, part)
            values = [r["test"]["by_part"].get(part, {}).get("energy", float("nan"))
                      for r in rows]
            diff = [v - ref["energy"] for v in values]
            parts[part] = {"n": ref["n"], "energy": float(np.mean(values)),
                           "reference": ref["energy"], "chance": ref["chance"],
                           "minus_reference": interval(diff)}
        entry["by_part"] = parts
        entry["part_mean_energy"] = float(np.mean([r["test"]["part_mean"]["energy"]
                                                   for r in rows]))
        summary["variants"][variant] = entry
    return summary


def run_study(config: StudyConfig, seeds: Sequence[int], variants: Sequence[str],
              out: str | Path | None = None, log: Callable[[str], None] = print,
              validation_only: bool = False) -> dict[str, Any]:
    """Every (variant, seed) run, with references and summary; resumes from ``out`` if it
    already holds runs made with the same configuration. ``validation_only``: score the
    validation split only (for choosing settings), never the test split."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; known: {list(VARIANTS)}")
    start = time.perf_counter()
    splits = load_splits(config)
    log(f"splits: train {len(splits.train.image_pids)} images / {len(splits.train)} captions, "
        f"val {len(splits.val.image_pids)} / {len(splits.val)}, test "
        f"{len(splits.test.image_pids)} / {len(splits.test)}; held out {splits.heldout}")
    references = build_references(splits, config)
    val_energy, power = references["prior_power_val"], references["best_power"]
    log(f"references (validation): prior energy {val_energy['1.0']:.3f}, prior^{power:g} "
        f"{val_energy[str(power)]:.3f} (best power); strongest: {references['strongest']}")
    if not validation_only:
        ref_test = references["test"]
        log(f"references (test): prior energy {ref_test['prior']['energy']:.3f}, prior^"
            f"{power:g} {ref_test['sharpened prior']['energy']:.3f}")
    runs: list[dict[str, Any]] = []
    path = Path(out) if out else None
    if path is not None and path.is_file():
        previous = json.loads(path.read_text())
        if previous.get("config") == json.loads(json.dumps(asdict(config))):
            runs = previous["runs"]
            log(f"resuming: {len(runs)} runs already in {path}")
    done = {(r["variant"], r["seed"]) for r in runs}

    def payload() -> dict[str, Any]:
        public_refs = {k: v for k, v in references.items() if not k.endswith("_maps")}
        return {"config": asdict(config), "seeds": list(seeds), "variants": list(variants),
                "splits": {"train_ids": len(set(splits.train.image_pids.tolist())),
                           "val_ids": len(set(splits.val.image_pids.tolist())),
                           "test_ids": len(set(splits.test.image_pids.tolist())),
                           "test_captions": min(config.test_captions, len(splits.test)),
                           "heldout": splits.heldout},
                "references": public_refs, "runs": runs,
                "validation_only": validation_only,
                "summary": summarise(runs, references) if runs and not validation_only
                else None,
                "seconds": round(time.perf_counter() - start, 1)}

    for seed in seeds:
        for variant in variants:
            if (variant, seed) in done or (variant == "pretrained" and
                                           any(r["variant"] == "pretrained" for r in runs)):
                continue
            runs.append(run_one(variant, seed, splits, config, references, log,
                                score_test=not validation_only))
            if path is not None:
                atomic_write_text(path, strict_json(payload(), indent=1))
    result = payload()
    if path is not None:
        atomic_write_text(path, strict_json(result, indent=1))
    return result


def markdown_tables(result: dict[str, Any]) -> str:
    """The study's headline, per-seed and per-part tables (docs/results.md), from its JSON."""
    summary, refs = result["summary"], result["references"]
    strongest = summary["strongest_reference"]
    ref_test = refs["test"][strongest]

    def ci(item: dict[str, float], scale: float = 100.0) -> str:
        if item["low"] is None or item["high"] is None or not (
                np.isfinite(item["low"]) and np.isfinite(item["high"])):  # one seed: none
            return f"{scale * item['mean']:+.1f} [no CI: one seed]"
        return (f"{scale * item['mean']:+.1f} [{scale * item['low']:+.1f}, "
                f"{scale * item['high']:+.1f}]")

    prior, sharp = refs["test"]["prior"], refs["test"]["sharpened prior"]
    lines = [f"Image-blind references on the test split: the location prior (energy "
             f"{prior['energy']:.3f}, pointing {prior['pointing']:.3f}, per-part mean energy "
             f"{prior['part_mean']['energy']:.3f}) and the prior sharpened to power "
             f"{refs['best_power']:g}, the best on validation (energy {sharp['energy']:.3f}, "
             f"pointing {sharp['pointing']:.3f}, per-part mean energy "
             f"{sharp['part_mean']['energy']:.3f}); the stronger on validation: **{strongest}**. "
             "Each \"− reference\" column subtracts the higher of the two on that measure "
             "(for the gap: the higher gap of the two priors' maps masked on the same model). "
             f"Chance (area share): {ref_test['chance']:.3f} phrase-weighted, "
             f"{ref_test['part_mean']['chance']:.3f} per-part mean.", "",
             "| variant | R@1 (Δ vs baseline) | best method (val) | energy | − reference, pts "
             "[95% CI] | gain over baseline, pts | pointing | − reference | gap | − reference "
             "maps' gap | image-swap energy (own − swap, pts) | per-part mean energy |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for variant, e in summary["variants"].items():
        r1 = f"{e['R1']['mean']:.2f}"
        if "minus_baseline" in e["R1"]:
            r1 += f" ({e['R1']['minus_baseline']['mean']:+.2f})"
        gain = ci(e["energy"]["gain_over_baseline"]) if "gain_over_baseline" in e["energy"] \
            else "—"
        methods = ", ".join(sorted(set(e["best_methods"])))
        lines.append(
            f"| {variant} | {r1} | {methods} | {e['energy']['mean']:.3f} | "
            f"{ci(e['energy']['image_dependent'])} | {gain} | {e['pointing']['mean']:.3f} | "
            f"{ci(e['pointing']['image_dependent'])} | {e['gap']['mean']:.3f} | "
            f"{ci(e['gap']['image_dependent'])} | {e['image_swap_energy']['mean']:.3f} "
            f"({ci(e['image_swap_energy']['own_minus_swap'])}) | "
            f"{e['part_mean_energy']:.3f} |")
    mixes = [r["prior_with_baseline"] for r in result["runs"] if "prior_with_baseline" in r]
    if mixes:
        lines += ["", f"Prior combined with the baseline's maps (choice on validation: "
                      f"{sorted({tuple(m['choice']) for m in mixes})}): test energy "
                      f"{np.mean([m['test']['energy'] for m in mixes]):.3f}, pointing "
                      f"{np.mean([m['test']['pointing'] for m in mixes]):.3f}, gap "
                      f"{np.mean([m['gap']['gap'] for m in mixes]):.3f} (mean over seeds)."]
    heads = {v: [r["ppim_maps"] for r in result["runs"] if r["variant"] == v and "ppim_maps" in r]
             for v in summary["variants"]}
    heads = {v: h for v, h in heads.items() if h}
    if heads:
        lines += ["", "The PPIM head's own maps on the test split (whether or not validation chose "
                      "them), mean over seeds: " + "; ".join(
                          f"{v}: energy {np.mean([h['test']['energy'] for h in hs]):.3f}, "
                          f"pointing {np.mean([h['test']['pointing'] for h in hs]):.3f}, gap "
                          f"{np.mean([h['gap']['gap'] for h in hs]):.3f}"
                          for v, hs in heads.items()) + "."]
    parts = list(ref_test["by_part"])
    lines += ["", "Energy per part (mean over seeds; in brackets, points above the best "
                  "image-blind reference of that part); then that reference and chance; "
                  "phrases per part in the header.", "",
              "| maps | " + " | ".join(f"{p} ({ref_test['by_part'][p]['n']})" for p in parts)
              + " |", "|---|" + "---|" * len(parts)]
    for variant, e in summary["variants"].items():
        cells = [f"{e['by_part'][p]['energy']:.3f} "
                 f"({100 * e['by_part'][p]['minus_reference']['mean']:+.1f})" for p in parts]
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    lines.append("| best image-blind reference | " + " | ".join(
        f"{reference_part(refs, p)['energy']:.3f}" for p in parts) + " |")
    lines.append("| chance | " + " | ".join(f"{ref_test['by_part'][p]['chance']:.3f}"
                                            for p in parts) + " |")
    lines += ["", "| seed | variant | R@1 | best method | energy | pointing | gap [95% CI] | "
                  "image-swap energy |", "|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["runs"], key=lambda r: (r["seed"], r["variant"])):
        g = r["gap"]
        lines.append(f"| {r['seed']} | {r['variant']} | {r['retrieval']['R1']:.2f} | "
                     f"{r['best_method']} | {r['test']['energy']:.3f} | "
                     f"{r['test']['pointing']:.3f} | {g['gap']:.3f} [{g['gap_ci_low']:.3f}, "
                     f"{g['gap_ci_high']:.3f}] | {r['image_swap']['energy']:.3f} |")
    return "\n".join(lines)
