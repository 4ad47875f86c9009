"""How many integrated-gradients steps token IG needs for the word-relevance verdict (the choice
behind ``word_part``'s ``n_steps=16``), on the choice seed's validation captions.

The zoo CLIP, SynthPedes seed 778 (misaligned crops), 100 captions spread over 40 validation
identities, each against its own image: the counterfactual word gap of token IG and of the
caption-blind references (``reid_explain.evaluation.word_reference``) at each step count.

    python benchmarks/probe_word_steps.py --out benchmarks/results_word_steps.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=778)
    parser.add_argument("--ids", type=int, default=40)
    parser.add_argument("--captions", type=int, default=100)
    parser.add_argument("--steps", type=int, nargs="+", default=[32, 16, 8, 4])
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from reid_explain import explainify, zoo
    from reid_explain.evaluation.word_reference import split_word_faithfulness
    from reid_explain.zoo.data import render_splits, text_image_data
    from reid_explain.zoo.registry import ZOO_DATA

    config = dict(ZOO_DATA) | {"seed": args.seed, "crops": "misaligned"}
    split = render_splits(config, max_ids={"val": args.ids}, splits=("val",))["val"]
    runs = []
    with explainify(zoo.load("clip-synthpedes")) as exp:
        data = text_image_data(split, exp.adapter.pixel_mean, exp.adapter.pixel_std)
        for steps in args.steps:
            start = time.perf_counter()
            r = split_word_faithfulness(exp, data, args.captions,
                                        text_options={"n_steps": steps})
            runs.append({"n_steps": steps, "pairs": r["pairs"],
                         "seconds": round(time.perf_counter() - start, 1),
                         "gap": r["gap"]["mean"], "reference": r["reference"],
                         "reference_gap": r["reference_gap"], "diff": r["diff"],
                         "diff_low": r["diff_low"], "diff_high": r["diff_high"]})
            print(runs[-1], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"seed": args.seed, "runs": runs}, indent=1,
                                             allow_nan=False))


if __name__ == "__main__":
    main()
