"""``reid-explain zoo list | show NAME | train NAME``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from ..errors import ReidExplainError
from .registry import available, card, card_path, spec


def _list(args: argparse.Namespace) -> int:
    for name in available():
        try:
            info = card(name, args.root)
            test = info["test"]
            status = (f"R@1 {test['R1']:.1f}  mAP {test['mAP']:.1f}  "
                      f"({info['weights_bytes'] / 1e6:.1f} MB)")
        except ReidExplainError:
            status = "not trained (reid-explain zoo train " + name + ")"
        print(f"{name:20s} {spec(name).family:10s} {spec(name).task:11s} {status}")
    return 0


def _show(args: argparse.Namespace) -> int:
    info = card(args.name, args.root)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(card_path(args.name, args.root).with_suffix(".md").read_text())
    return 0


def _train(args: argparse.Namespace) -> int:
    from .training import train

    info = train(args.name, out=args.out, device=args.device, steps=args.steps, n_ids=args.ids)
    test = info["test"]
    print(f"{args.name}: test R@1 {test['R1']:.2f}  R@5 {test['R5']:.2f}  mAP {test['mAP']:.2f} "
          f"({test['queries']} queries, {test['gallery']} gallery); target "
          f"{'met' if info['target_met'] else 'MISSED'} {info['targets']}; "
          f"{info['training']['wall_seconds'] / 60:.1f} min; "
          f"wrote {card_path(args.name, args.out)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="reid-explain zoo",
                                     description="models trained on SynthPedes (docs/zoo.md)")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("list", help="the zoo's models and their test scores")
    p.add_argument("--root", default=None, help="folder of cards and weights (default: package)")
    p.set_defaults(run=_list)
    p = sub.add_parser("show", help="print a model card")
    p.add_argument("name", choices=available())
    p.add_argument("--root", default=None)
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_show)
    p = sub.add_parser("train", help="reproduce a checkpoint from its spec")
    p.add_argument("name", choices=available())
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--out", default=None, help="output folder (default: the package's)")
    p.add_argument("--steps", type=int, default=None, help="fewer steps (smoke runs)")
    p.add_argument("--ids", type=int, default=None, help="fewer SynthPedes identities")
    p.set_defaults(run=_train)
    return parser


def zoo_main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except ReidExplainError as exc:
        print(f"reid-explain zoo {args.action}: error: {exc}", file=sys.stderr)
        return 2
