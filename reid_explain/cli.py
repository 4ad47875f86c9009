"""The ``reid-explain`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from . import plugin_manager as plugins


def cmd_plugins(args: argparse.Namespace) -> int:
    """List every loaded plugin and what it provides."""
    records = plugins.list_plugins()
    if args.json:
        print(json.dumps(records, indent=2))
        return 0
    for record in records:
        print(f"{record['name']}  [{record['source']}]")
        for kind, names in record["provides"].items():
            print(f"    {kind}: {', '.join(names)}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(out=args.out, methods=args.methods, seed=args.seed, quick=args.quick)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "plugins": cmd_plugins,
    "demo": cmd_demo,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reid-explain",
        description="Explain person re-identification models: grounding maps, faithfulness "
                    "scores, attribute audits.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plugins", help="list loaded plugins and what they provide")
    p.add_argument("--json", action="store_true", help="print JSON")
    p = sub.add_parser("demo", help="explain small models end to end and write a report")
    p.add_argument("--out", default="reid_explain_output/demo", help="output directory")
    p.add_argument("--methods", nargs="+", default=None,
                   help="attribution methods (default: every registered image method)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="fewer images, for smoke tests")
    sub.add_parser("synth", add_help=False,
                   help="render and export a SynthPedes data set (see synth --help)")
    return parser


#: subcommands with their own argument parser: everything after the name is theirs
DELEGATED = {"synth": ("reid_explain.data.synth", "synth_main")}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        import importlib

        module, function = DELEGATED[argv[0]]
        return getattr(importlib.import_module(module), function)(argv[1:])
    args = build_parser().parse_args(argv)
    from .errors import ReidExplainError

    try:
        return COMMANDS[args.command](args)
    except ReidExplainError as exc:
        print(f"reid-explain {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
