"""InterPartAbility in the fine-tuned regime: the zoo's pre-trained CLIP fine-tuned as baseline /
+PPIM / +PPIM+constraint (and without position terms) on held-out garment/colour combinations,
scored against the strongest image-blind reference (reid_explain.studies.interpartability).

    python benchmarks/bench_interpartability_finetune.py --seeds 0 1 2 3 4 \\
        --out benchmarks/results_interpartability_finetune.json

Choices are made on the validation split; the test split is scored once per run. The output
JSON resumes: runs already in it (same configuration) are skipped.
"""

from __future__ import annotations

import argparse
import json

import torch

from reid_explain.studies.interpartability import (
    VARIANTS,
    StudyConfig,
    markdown_tables,
    run_study,
)


def main() -> None:
    defaults = StudyConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS))
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--plugin-lr-scale", type=float, default=defaults.plugin_lr_scale,
                        help="learning rate of the plugins' heads, as a multiple of --lr")
    parser.add_argument("--ids", type=int, default=defaults.data["n_ids"])
    parser.add_argument("--data-seed", type=int, default=defaults.data["seed"])
    parser.add_argument("--val-captions", type=int, default=defaults.val_captions)
    parser.add_argument("--test-captions", type=int, default=defaults.test_captions)
    parser.add_argument("--ppim-options", type=json.loads, default={},
                        help="PPIM options over the defaults, as JSON")
    parser.add_argument("--constraint-options", type=json.loads, default={},
                        help="attention-constraint options over the defaults, as JSON")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--validation-only", action="store_true",
                        help="score the validation split only (choosing settings)")
    parser.add_argument("--out", default=None, help="JSON output (resumable)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the results tables (docs/results.md) at the end")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    config = StudyConfig(steps=args.steps, lr=args.lr, batch_size=args.batch_size,
                         plugin_lr_scale=args.plugin_lr_scale,
                         data={**defaults.data, "n_ids": args.ids, "seed": args.data_seed},
                         val_captions=args.val_captions, test_captions=args.test_captions,
                         ppim={**defaults.ppim, **args.ppim_options},
                         constraint={**defaults.constraint, **args.constraint_options},
                         device=args.device)
    result = run_study(config, args.seeds, args.variants, out=args.out,
                       log=lambda line: print(line, flush=True),
                       validation_only=args.validation_only)
    summary = result["summary"]
    if summary is None:
        return
    print(f"\nstrongest image-blind reference (chosen on validation): "
          f"{summary['strongest_reference']}")
    for variant, entry in summary["variants"].items():
        dep = entry["energy"]["image_dependent"]
        line = (f"{variant:22s} R@1 {entry['R1']['mean']:6.2f} energy {entry['energy']['mean']:.3f}"
                f" pointing {entry['pointing']['mean']:.3f} gap {entry['gap']['mean']:.3f} | "
                f"energy - reference {dep['mean']:+.3f} [{dep['low']:+.3f}, {dep['high']:+.3f}]")
        if "gain_over_baseline" in entry["energy"]:
            g = entry["energy"]["gain_over_baseline"]
            line += f" | vs baseline {g['mean']:+.3f} [{g['low']:+.3f}, {g['high']:+.3f}]"
        print(line)
    if args.markdown:
        print("\n" + markdown_tables(result))


if __name__ == "__main__":
    main()
