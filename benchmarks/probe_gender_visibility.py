"""How much of an image a gender change alters, per viewpoint (issue 28, model-free).

SynthPedes draws gender as the widths of shoulders, waist and head. Each image is re-rendered
with the other gender (``reid_explain.attributes.causal.changed_render``: same person, camera,
pose and view) and the pixels that differ are counted, per viewpoint: an upper bound on what
any router can read there.

    python benchmarks/probe_gender_visibility.py --seed 611 --images 900
"""

from __future__ import annotations

import argparse

import numpy as np

from reid_explain.attributes.causal import changed_render
from reid_explain.synthpedes.planning import SynthConfig, _gen, plan, render_sample, sample_view
from reid_explain.zoo.registry import ZOO_DATA


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=611)
    parser.add_argument("--ids", type=int, default=200)
    parser.add_argument("--images", type=int, default=900, help="the plan's first images")
    args = parser.parse_args()
    synth = plan(SynthConfig(**(dict(ZOO_DATA) | {"seed": args.seed, "n_ids": args.ids,
                                                   "images_per_id": 6, "couple": False})))
    changed: dict[str, list[int]] = {}
    for spec in synth.samples[:args.images]:
        if spec.pid == 0:  # distractors
            continue
        image = render_sample(synth, spec, with_captions=False).rendered.image
        view = sample_view(_gen(synth.config.seed, spec.pid, spec.cam, spec.idx),
                           synth.cameras[spec.cam - 1], synth.config.occlusion_prob).viewpoint
        other, _ = changed_render(synth, spec, "gender", seed=0)
        changed.setdefault(view, []).append(int((other.image != image).any(axis=-1).sum()))
    for view, counts in sorted(changed.items()):
        c = np.array(counts)
        print(f"{view:6s} {len(c):4d} images: {c.mean():7.1f} pixels changed on average "
              f"(median {np.median(c):.0f}), {np.mean(c == 0):.3f} unchanged")


if __name__ == "__main__":
    main()
