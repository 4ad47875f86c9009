"""SynthPedes: a synthetic pedestrian ReID benchmark whose ground truth is known.

Real ReID data has no part masks and no known attribute importance, so claims about explanation
maps and attribute audits cannot be checked on it. SynthPedes renders pedestrians procedurally
(numpy, no downloads) and knows, per image, every part's mask, every attribute, and which caption
words name which part; the importance of each attribute for identity is planted. See
docs/synthpedes.md. This module is the ``reid-explain synth`` command and re-exports
the public names (the package :mod:`reid_explain.synthpedes` serves them lazily):

* identities and planted structure: :mod:`reid_explain.synthpedes.identities`
* drawing one image with its masks: :mod:`reid_explain.synthpedes.rendering`
* captions with phrase spans: :mod:`reid_explain.synthpedes.captions`
* the Market-1501-style split and per-image seeds: :mod:`reid_explain.synthpedes.planning`
* writing the real formats: :mod:`reid_explain.synthpedes.export`
* the sample grid picture: :mod:`reid_explain.synthpedes.figure`
"""

from __future__ import annotations

import argparse
import json
import sys

from reid_explain.errors import ReidExplainError
from reid_explain.synthpedes.captions import Caption, Phrase, make_captions
from reid_explain.synthpedes.export import (
    FORMATS,
    ExportSummary,
    export_synthpedes,
    parse_formats,
)
from reid_explain.synthpedes.identities import (
    DEFAULT_PLANTED_ORDER,
    Identity,
    IdentityDetail,
    attribute_entropies,
    make_identities,
    market_codes,
    planted_entropies,
)
from reid_explain.synthpedes.planning import (
    Sample,
    SampleSpec,
    SynthConfig,
    SynthPlan,
    iter_samples,
    plan,
    render_sample,
)
from reid_explain.synthpedes.rendering import (
    LABEL,
    Camera,
    Occluder,
    Rendered,
    View,
    make_cameras,
    masks_from_labels,
    render,
    sample_view,
)

__all__ = [
    "DEFAULT_PLANTED_ORDER", "FORMATS", "LABEL", "Camera", "Caption", "ExportSummary",
    "Identity", "IdentityDetail", "Occluder", "Phrase", "Rendered", "Sample", "SampleSpec",
    "SynthConfig", "SynthPlan", "View", "attribute_entropies", "export_synthpedes",
    "iter_samples", "make_cameras", "make_captions", "make_identities", "market_codes",
    "masks_from_labels", "plan", "planted_entropies", "render", "render_sample", "sample_view",
    "synth_main",
]


def build_parser(prog: str = "reid-explain synth") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, description="Render the SynthPedes benchmark and write it in the real "
        "formats (Market-1501 folders, market_attribute.mat, CUHK-PEDES reid_raw.json) plus "
        "part masks and phrase spans.")
    p.add_argument("--out", help="root folder to write (new or a previous SynthPedes export)")
    p.add_argument("--ids", type=int, default=100, help="number of identities (default 100)")
    p.add_argument("--images-per-id", type=int, default=8, help="images per identity (>= 4)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same bytes)")
    p.add_argument("--height", type=int, default=128, help="image height in pixels")
    p.add_argument("--width", type=int, default=64, help="image width in pixels")
    p.add_argument("--cams", type=int, default=6, help="number of cameras, 2..6")
    p.add_argument("--planted-order", default=None,
                   help="comma list of attributes, most identity-separating first (default: "
                   + ",".join(DEFAULT_PLANTED_ORDER) + "); unnamed ones follow in default order")
    p.add_argument("--planted-decay", type=float, default=0.88,
                   help="entropy ratio between consecutive attributes in the planted order")
    p.add_argument("--detail-strength", type=float, default=0.3,
                   help="0..1, how much identity-specific detail (shade, texture, build) varies")
    p.add_argument("--occlusion", type=float, default=0.15, help="share of occluded images")
    p.add_argument("--captions", type=int, default=2, help="captions per image")
    p.add_argument("--crops", choices=("aligned", "misaligned"), default="aligned",
                   help="aligned (rendered) crops, or detector-like misaligned ones: loose, "
                        "shifted, cutting the head or feet, with passers-by (docs/synthpedes.md)")
    p.add_argument("--format", default="all",
                   help="'all' or a comma list of " + ", ".join(FORMATS))
    p.add_argument("--grid", default=None, metavar="PNG",
                   help="also save a picture of sample images with masks and captions")
    return p


def synth_main(argv: list[str] | None = None) -> int:
    """``reid-explain synth``: export a SynthPedes data set; prints a JSON summary."""
    args = build_parser().parse_args(argv)
    if args.out is None and args.grid is None:
        print("reid-explain synth: give --out (and/or --grid)", file=sys.stderr)
        return 2
    try:
        order = None if args.planted_order is None else tuple(
            n.strip() for n in args.planted_order.split(",") if n.strip())
        config = SynthConfig(
            n_ids=args.ids, images_per_id=args.images_per_id, seed=args.seed,
            height=args.height, width=args.width, n_cams=args.cams, planted_order=order,
            planted_decay=args.planted_decay, detail_strength=args.detail_strength,
            occlusion_prob=args.occlusion, captions_per_image=args.captions,
            crops=args.crops)
        formats = parse_formats(args.format)
        out: dict = {}
        if args.out is not None:
            out["export"] = export_synthpedes(args.out, config, formats).to_json()
        if args.grid is not None:
            from reid_explain.synthpedes.figure import save_grid

            out["grid"] = str(save_grid(args.grid, config))
    except ReidExplainError as exc:
        print(f"reid-explain synth: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(synth_main())
