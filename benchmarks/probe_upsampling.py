"""Does the kernel that upsamples a coarse map to the image move its peak onto the person?
(issue 25, a probe on the choice seed; no default changed).

Half of plain Grad-CAM's pointing misses on misaligned crops are a cell centre within half a
cell of the person (``probe_gradcam_misses.py``): bilinear upsampling puts the peak of an 8x4
map at a cell centre. Bicubic interpolation can put it between cell centres, towards the
larger neighbour. Here the same maps (each query's top-1 match, centred score, as
``evaluate``) are upsampled by ``nearest``, ``bilinear`` (the library's) and ``bicubic``, and
person pointing and energy are scored for each.

    python benchmarks/probe_upsampling.py --seed 204 --methods gradcam layercam occlusion \
        --out benchmarks/results_upsampling_probe.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F

MODES = ("nearest", "bilinear", "bicubic")


def scores(maps: torch.Tensor, person: torch.Tensor, size: tuple[int, int], mode: str
           ) -> dict[str, float]:
    """Person pointing (the upsampled map's arg-max on the person) and energy (positive mass
    on the person), each a mean over queries."""
    options = {} if mode == "nearest" else {"align_corners": False}
    up = F.interpolate(maps[:, None].float(), size=size, mode=mode, **options)[:, 0]
    flat, mask = up.flatten(1), person.flatten(1).float()
    hit = mask.gather(1, flat.argmax(dim=1, keepdim=True))[:, 0]
    positive = flat.clamp_min(0)
    energy = (positive * mask).sum(1) / positive.sum(1).clamp_min(1e-12)
    return {"pointing": float(hit.mean()), "energy": float(energy.mean())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=204)
    parser.add_argument("--ids", type=int, default=60)
    parser.add_argument("--queries", type=int, default=80)
    parser.add_argument("--methods", nargs="+", default=["gradcam", "layercam", "occlusion"])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from reid_explain import explainify, zoo
    from reid_explain.studies.demo import image_eval_set
    from reid_explain.zoo.data import render_splits
    from reid_explain.zoo.registry import ZOO_DATA

    config = dict(ZOO_DATA) | {"seed": args.seed, "crops": "misaligned"}
    split = render_splits(config, with_masks=True, max_ids={"test": args.ids},
                          splits=("test",))["test"]
    out = {"seed": args.seed, "crops": "misaligned", "methods": {}}
    with explainify(zoo.load("osnet-synthpedes")) as exp:
        data = image_eval_set(split, exp.adapter.pixel_mean, exp.adapter.pixel_std)
        n = min(args.queries, len(data.query))
        out["queries"] = n
        size = tuple(data.query.shape[-2:])
        person = data.query_masks[:n].bool().any(dim=1)
        for method in args.methods:
            result = exp.explain(data.query[:n], data.gallery, method=method, top_k=1,
                                 side="query", centre="gallery")
            maps = result.query.maps
            out["methods"][method] = {"grid": list(maps.shape[-2:])} | {
                mode: scores(maps, person, size, mode) for mode in MODES}
            print(method, {m: out["methods"][method][m] for m in MODES}, flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
