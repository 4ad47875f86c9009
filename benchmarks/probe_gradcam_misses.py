"""Where plain Grad-CAM's peak lands when it misses the person on misaligned crops (issue 25).

Grad-CAM's pointing on misaligned crops ties the image-blind reference (docs/results.md). This
probe asks why, on the choice seed (204; no choice is made from it): for each query of the
test split, its top-1 match explained with the centred score as ``evaluate`` does, the
upsampled map's peak is classed as on the person, on the passer-by (the partial second person
the misaligned crops add at an edge; its mask is re-drawn here from the same crop plan), or on
background, with its distance in pixels to the nearest person pixel and the share of the
person's pixels under the peak's grid cell.

    python benchmarks/probe_gradcam_misses.py --seed 204 --ids 60 --method gradcam
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch.nn.functional as F


def passerby_masks(config: dict, pids: list[int]) -> dict[tuple[int, int, int], np.ndarray]:
    """(pid, cam, idx) -> the passer-by's pixels in that misaligned crop (all False if none)."""
    from reid_explain.synthpedes import crops
    from reid_explain.synthpedes.planning import SynthConfig, _gen, plan, sample_view
    from reid_explain.synthpedes.rendering import _Canvas, _draw_person

    synth = plan(SynthConfig(**config))
    c = synth.config
    others = synth.distractor_identities or synth.identities
    out = {}
    for spec in synth.samples:
        if spec.pid not in pids:
            continue
        identity, camera = synth.identity_of(spec), synth.cameras[spec.cam - 1]
        draw = crops.draw_crop(_gen(c.seed, 0xC20B, spec.pid, spec.cam, spec.idx),
                               (c.height, c.width), c.crop_scale, c.crop_shift, c.crop_cut_prob,
                               c.crop_passerby_prob, len(others), camera, sample_view)
        mask = np.zeros((c.height, c.width), bool)
        passerby = others[draw.passerby] if draw.passerby >= 0 else None
        if passerby is not None and passerby.pid != identity.pid and draw.passerby_view:
            cv = _Canvas(crops.CANVAS * c.height, crops.CANVAS * c.width)
            _draw_person(cv, passerby, draw.passerby_view)
            rows, cols = crops.box_index_map(draw.box, (c.height, c.width))
            rows = rows.clip(0, cv.lab.shape[0] - 1)
            cols = cols.clip(0, cv.lab.shape[1] - 1)
            mask = crops.apply_index_map(cv.lab, rows, cols) > 0
        out[(spec.pid, spec.cam, spec.idx)] = mask
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=204)
    parser.add_argument("--ids", type=int, default=60)
    parser.add_argument("--queries", type=int, default=80)
    parser.add_argument("--method", default="gradcam")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from reid_explain import explainify, zoo
    from reid_explain.studies.demo import image_eval_set
    from reid_explain.zoo.data import render_splits
    from reid_explain.zoo.registry import ZOO_DATA

    config = dict(ZOO_DATA) | {"seed": args.seed, "crops": "misaligned"}
    split = render_splits(config, with_masks=True, max_ids={"test": args.ids},
                          splits=("test",))["test"]
    with explainify(zoo.load("osnet-synthpedes")) as exp:
        data = image_eval_set(split, exp.adapter.pixel_mean, exp.adapter.pixel_std)
        n = min(args.queries, len(data.query))
        result = exp.explain(data.query[:n], data.gallery, method=args.method, top_k=1,
                             side="query", centre="gallery")
        grid = tuple(result.query.maps.shape[-2:])
        size = tuple(data.query.shape[-2:])
        maps = F.interpolate(result.query.maps[:, None].float(), size=size, mode="bilinear",
                             align_corners=False)[:, 0]
    person = data.query_masks[:n].bool().any(dim=1).numpy()  # the union of the parts
    from reid_explain.synthpedes.planning import SynthConfig, plan

    synth = plan(SynthConfig(**config))
    test_ids = set(sorted(synth.test_pids)[: args.ids])
    keys = [(s.pid, s.cam, s.idx) for s in synth.samples if s.pid in test_ids]
    assert len(keys) == len(split.pids) and [k[0] for k in keys] == list(split.pids)
    passer = passerby_masks(config, sorted(test_ids))
    qkeys = [k for k, q in zip(keys, split.is_query, strict=True) if q][:n]
    counts = {"person": 0, "passerby": 0, "background": 0}
    rows = []
    cell_h, cell_w = size[0] // grid[0], size[1] // grid[1]
    for i in range(n):
        m = maps[i].numpy()
        y, x = np.unravel_index(int(m.argmax()), m.shape)
        ys, xs = np.nonzero(person[i])
        dist = float(np.sqrt(((ys - y) ** 2 + (xs - x) ** 2).min())) if len(ys) else None
        cy, cx = y // cell_h, x // cell_w
        cover = float(person[i][cy * cell_h:(cy + 1) * cell_h, cx * cell_w:(cx + 1) * cell_w]
                      .mean())
        if person[i][y, x]:
            where = "person"
        elif passer[qkeys[i]][y, x]:
            where = "passerby"
        else:
            where = "background"
        counts[where] += 1
        has_passer = bool(passer[qkeys[i]].any())
        rows.append({"where": where, "distance_px": dist, "cell_person_share": cover,
                     "has_passerby": has_passer, "person_share": float(person[i].mean())})
    misses = [r for r in rows if r["where"] != "person"]
    distances = [r["distance_px"] for r in misses if r["distance_px"] is not None]
    summary = {"seed": args.seed, "method": args.method, "queries": n, "grid": grid,
               "counts": counts,
               "with_passerby": sum(r["has_passerby"] for r in rows),
               "misses_with_passerby": sum(r["has_passerby"] for r in misses),
               "miss_distance_px_median": float(np.median(distances)) if distances else None,
               "miss_distance_px": [round(d, 1) for d in distances],
               "miss_cell_person_share_mean": float(np.mean([r["cell_person_share"]
                                                             for r in misses])) if misses else None}
    print(json.dumps(summary, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1,
                                              allow_nan=False))


if __name__ == "__main__":
    main()
