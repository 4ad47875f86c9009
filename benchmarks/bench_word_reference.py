"""Word relevance of the zoo CLIP against the caption-blind references (issue 25's question for
words: does token IG say more than which words usually matter?).

For each SynthPedes seed (identities the zoo never saw) and crop condition: up to
``--captions`` captions spread over the test identities, each against its own image; token IG
(16 steps, as the report) scored by counterfactual word removal beside random words and the
lexical and position references (``reid_explain.evaluation.word_reference``, cross-fitted over
identities), the verdict against the stronger one; the same for the top phrase (the captions'
phrase spans) against a random phrase.

    python benchmarks/bench_word_reference.py --seeds 779 780 781 --crops aligned misaligned \
        --out benchmarks/results_word_reference.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[779])
    parser.add_argument("--crops", nargs="+", default=["aligned", "misaligned"])
    parser.add_argument("--test-ids", type=int, default=60)
    parser.add_argument("--captions", type=int, default=100)
    parser.add_argument("--n-steps", type=int, default=16)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from reid_explain import explainify, zoo
    from reid_explain.evaluation.word_reference import split_word_faithfulness
    from reid_explain.zoo.data import render_splits, text_image_data
    from reid_explain.zoo.registry import ZOO_DATA

    runs = []
    with explainify(zoo.load("clip-synthpedes")) as exp:
        for seed in args.seeds:
            for crops in args.crops:
                config = dict(ZOO_DATA) | {"seed": seed, "crops": crops}
                split = render_splits(config, max_ids={"test": args.test_ids},
                                      splits=("test",))["test"]
                data = text_image_data(split, exp.adapter.pixel_mean, exp.adapter.pixel_std)
                r = split_word_faithfulness(exp, data, args.captions, seed=seed,
                                            text_options={"n_steps": args.n_steps})
                runs.append({"seed": seed, "crops": crops} | r)
                ph = r["phrases"]
                print(f"seed {seed} {crops:10s} gap {r['gap']['mean']:.4f} "
                      f"[{r['gap']['low']:.4f}, {r['gap']['high']:.4f}]; "
                      + ", ".join(f"{k} {v['gap']['mean']:.4f}"
                                  for k, v in r["references"].items())
                      + f"; - {r['reference']}: {r['diff']:+.4f} [{r['diff_low']:+.4f}, "
                        f"{r['diff_high']:+.4f}], beats: {r['beaten']} | top phrase gap "
                        f"{ph['gap']['mean']:.4f}; "
                      + ", ".join(f"{k} {v['gap']['mean']:.4f}"
                                  for k, v in ph["references"].items())
                      + f"; - {ph['reference']}: {ph['diff']:+.4f} [{ph['diff_low']:+.4f}, "
                        f"{ph['diff_high']:+.4f}], beats: {ph['beaten']}", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(runs, indent=1, allow_nan=False))


if __name__ == "__main__":
    main()
