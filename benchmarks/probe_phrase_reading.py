"""Does the zoo CLIP read each part's phrase from that part's pixels? (issues 25 and 26)

A phrase map is faithful when it shows where the model's phrase score comes from. If the model
does not read a part's colour from the part's pixels, no faithful map of that phrase can land
on the part, and a grounding target for it measures the model, not the map. This probe asks
the model directly, with SynthPedes changed-part pairs: an image and its re-render with one
part's colour changed (nothing else differs, docs/synthpedes.md). For a pair whose part went
from colour A to colour B, with phrases "A <part>" and "B <part>":

    swing = [cos(x1, "A") - cos(x1, "B")] - [cos(x2, "A") - cos(x2, "B")]

is positive when the model reads the change the right way round (x1 shows A, x2 shows B).
Per part: how often the swing is positive (0.5 = the model cannot tell) and its mean with a
95% bootstrap CI over pairs. Seed 778 is the phrase-choice seed; no choice is made here.

    python benchmarks/probe_phrase_reading.py --seed 778 --pairs 320 --crops aligned
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

#: the phrase a caption would use for each part, with its colour
TEMPLATES = {"upper_body": "a {} shirt", "lower_body": "{} pants", "shoes": "{} shoes",
             "hair": "{} hair", "hat": "a {} hat", "backpack": "a {} backpack",
             "bag": "a {} bag", "handbag": "a {} handbag"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=778)
    parser.add_argument("--pairs", type=int, default=320)
    parser.add_argument("--crops", choices=("aligned", "misaligned"), default="aligned")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from reid_explain import explainify, zoo
    from reid_explain.core.inputs import normalised_images
    from reid_explain.evaluation.bootstrap import bootstrap_ci
    from reid_explain.synthpedes.pairs import changed_part_pairs
    from reid_explain.synthpedes.planning import SynthConfig

    config = SynthConfig(**(zoo.card("clip-synthpedes")["data"]["config"]
                            | {"seed": args.seed, "crops": args.crops}))
    pairs = changed_part_pairs(config, args.pairs, split="test", seed=0)
    rows = []
    with explainify(zoo.load("clip-synthpedes")) as exp, torch.no_grad():
        mean, std = exp.adapter.pixel_mean, exp.adapter.pixel_std
        first = F.normalize(exp.embed(normalised_images(pairs.first, mean, std)), dim=-1)
        second = F.normalize(exp.embed(normalised_images(pairs.second, mean, std)), dim=-1)
        for i, change in enumerate(pairs.changes):
            part, colours = change.split(": ", 1)
            if " pattern" in part:
                continue  # colour changes only: a pattern has no phrase pair of this kind
            old, new = (c.strip() for c in colours.split("->"))
            text = F.normalize(exp.embed_text([TEMPLATES[part].format(old),
                                               TEMPLATES[part].format(new)]), dim=-1)
            s1, s2 = first[i] @ text.T, second[i] @ text.T
            rows.append({"part": part, "change": change,
                         "swing": float((s1[0] - s1[1]) - (s2[0] - s2[1]))})
    summary = {}
    for part in TEMPLATES:
        swings = np.array([r["swing"] for r in rows if r["part"] == part])
        if len(swings) == 0:
            continue
        ci = bootstrap_ci(swings, seed=0)
        summary[part] = {"pairs": int(len(swings)), "right_way": float((swings > 0).mean()),
                         "swing": ci.estimate, "swing_low": ci.low, "swing_high": ci.high}
        print(f"{part:11s} {len(swings):4d} pairs  read the right way {(swings > 0).mean():.2f}  "
              f"swing {ci.estimate:+.4f} [{ci.low:+.4f}, {ci.high:+.4f}]", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"seed": args.seed, "crops": args.crops,
                                              "summary": summary, "rows": rows}, indent=1,
                                             allow_nan=False))


if __name__ == "__main__":
    main()
