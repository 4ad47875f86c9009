"""SynthPedes throughput on one core, against a baseline measured in the same run.

Baseline: encode the same number of blank (np.zeros) images to JPEG, i.e. the cost floor of
writing any image data set. Usage: ``python benchmarks/bench_synth.py [--n 2000]``.
Prints ``name: value (ratio x baseline)`` lines; ratio = throughput / baseline throughput.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from reid_explain.synthpedes.export import export_synthpedes, jpeg_bytes  # noqa: E402
from reid_explain.synthpedes.planning import SynthConfig, plan, render_sample  # noqa: E402


def _rate(n: int, seconds: float) -> float:
    return n / max(seconds, 1e-9)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=2000, help="images per measurement")
    p.add_argument("--height", type=int, default=128)
    p.add_argument("--width", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    n_ids = max(2, min(1501, args.n // 8))
    config = SynthConfig(n_ids=n_ids, images_per_id=8, height=args.height, width=args.width)
    sp = plan(config)
    specs = (sp.samples * (args.n // len(sp.samples) + 1))[: args.n]

    t = time.perf_counter()
    blank = np.zeros((args.height, args.width, 3), np.uint8)
    for _ in specs:
        jpeg_bytes(blank)
    baseline = _rate(len(specs), time.perf_counter() - t)

    t = time.perf_counter()
    for spec in specs:
        render_sample(sp, spec, with_captions=False)
    render_only = _rate(len(specs), time.perf_counter() - t)

    t = time.perf_counter()
    for spec in specs:
        sample = render_sample(sp, spec)
        jpeg_bytes(sample.rendered.image)
    full = _rate(len(specs), time.perf_counter() - t)

    export_config = SynthConfig(n_ids=max(2, min(1501, args.n // 8 // 2)), images_per_id=8,
                                height=args.height, width=args.width)
    n_export = len(plan(export_config).samples)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        export_synthpedes(Path(tmp) / "synthpedes", export_config)
        export = _rate(n_export, time.perf_counter() - t)

    print(f"SynthPedes at {args.height}x{args.width}, {len(specs)} images, 1 thread "
          f"(target >= 300 images/s for render+masks+captions+jpeg)")
    print(f"baseline np.zeros+jpeg: {baseline:.0f} images/s (1.00x baseline)")
    print(f"render+masks: {render_only:.0f} images/s ({render_only / baseline:.2f}x baseline)")
    print(f"render+masks+captions+jpeg: {full:.0f} images/s ({full / baseline:.2f}x baseline)")
    print(f"export to disk, all formats ({n_export} images): {export:.0f} images/s "
          f"({export / baseline:.2f}x baseline)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
