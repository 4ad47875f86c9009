"""Do the maps point at the part that changed? Changed-part pairs against an image-blind prior.

Each pair is a SynthPedes image of identities the zoo never saw and its re-render with one
part's colour or pattern changed (``reid_explain.synthpedes.pairs``); the changed part's mask is
where the pair differs. Each method explains the pair's loss, ``1 - cos(f(first), f(second))``,
on the first image (``CosineDistance``), and the pointing game asks whether the map's peak lies
in the changed part. The image-blind reference is the mean changed-part mask of pairs drawn from
the *training* identities: it knows where changes happen on average, not which part changed in
this pair. "IG, counterfactual baseline" integrates from the second image to the first, so its
attributions sum to the loss and live only where the two images differ: shown as its own row,
it is the by-construction answer, not a competitor.

    python benchmarks/bench_changed_parts.py --seeds 201 202 203 --pairs 120
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

METHODS: dict[str, dict[str, Any]] = {
    "gradcam": {}, "layercam": {}, "occlusion": {"perturbations_per_eval": 32},
    "integrated_gradients": {"n_steps": 16, "internal_batch_size": 64}}


def tensors(exp: Any, images: np.ndarray) -> torch.Tensor:
    mean = torch.tensor(exp.adapter.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(exp.adapter.pixel_std).view(1, 3, 1, 1)
    return (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - mean) / std


def pointing(maps: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
    from reid_explain.evaluation.bootstrap import bootstrap_ci
    from reid_explain.evaluation.grounding_scores import pointing_game

    size = tuple(masks.shape[-2:])
    if tuple(maps.shape[-2:]) != size:
        maps = torch.nn.functional.interpolate(maps[:, None].float(), size=size,
                                               mode="bilinear", align_corners=False)[:, 0]
    hits = pointing_game(maps, masks[:, None])[:, 0].numpy()
    ci = bootstrap_ci(hits)
    return {"pointing": ci.estimate, "low": ci.low, "high": ci.high, "values": hits.tolist()}


def run(exp: Any, seed: int, crops: str, n_pairs: int) -> dict[str, Any]:
    from reid_explain.plugin_api.targets import CosineDistance
    from reid_explain.synthpedes.pairs import changed_part_pairs
    from reid_explain.synthpedes.planning import SynthConfig
    from reid_explain.zoo.registry import ZOO_DATA

    config = SynthConfig(**(dict(ZOO_DATA) | {"seed": seed, "crops": crops}))
    train = changed_part_pairs(config, n_pairs, split="train", seed=seed)
    test = changed_part_pairs(config, n_pairs, split="test", seed=seed)
    prior = torch.from_numpy(train.changed_masks()).float().mean(dim=0)
    truth = torch.from_numpy(test.changed_masks())
    first, second = tensors(exp, test.first), tensors(exp, test.second)
    target = CosineDistance(exp.embed(second))
    out: dict[str, Any] = {"seed": seed, "crops": crops, "pairs": len(test),
                           "reference": pointing(prior.expand(len(test), *prior.shape), truth)}
    for method, options in METHODS.items():
        maps = exp.attribute(first, target, method=method, **options)
        out[method] = pointing(maps, truth)
    maps = exp.attribute(first, target, method="integrated_gradients", baselines=second,
                         n_steps=16, internal_batch_size=64)
    out["IG, counterfactual baseline"] = pointing(maps, truth)
    line = "  ".join(f"{k} {v['pointing']:.3f}" for k, v in out.items() if isinstance(v, dict))
    print(f"seed {seed} {crops}: {line}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[201])
    parser.add_argument("--crops", nargs="+", default=["aligned", "misaligned"])
    parser.add_argument("--pairs", type=int, default=120)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from reid_explain import explainify, zoo

    runs = []
    with explainify(zoo.load("osnet-synthpedes")) as exp:
        for seed in args.seeds:
            for crops in args.crops:
                runs.append(run(exp, seed, crops, args.pairs))
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
