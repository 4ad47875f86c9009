"""The SynthPedes sample grid (docs/img/synthpedes_grid.png): images, mask overlays, captions.

Why: one look shows what the generator makes and that masks and phrases line up. Made by
``python -m reid_explain.synthpedes --grid docs/img/synthpedes_grid.png``.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path

import numpy as np

from reid_explain._util.io import atomic_write_bytes
from reid_explain.data.schema import PARTS
from reid_explain.synthpedes.planning import SynthConfig, plan, render_sample

#: One colour per part (tab10), index = label - 1.
PART_COLOURS = np.array([
    (31, 119, 180), (140, 86, 75), (255, 127, 14), (44, 160, 44), (214, 39, 40),
    (148, 103, 189), (227, 119, 194), (188, 189, 34), (23, 190, 207)], dtype=np.float32)


def overlay(image: np.ndarray, labels: np.ndarray, alpha: float = 0.75) -> np.ndarray:
    """Part colours blended over the image; background greyed and dimmed so parts stand out."""
    out = image.astype(np.float32)
    out[:] = 0.3 * out.mean(axis=2, keepdims=True)
    on = labels > 0
    out[on] = (1 - alpha) * image[on] + alpha * PART_COLOURS[labels[on] - 1]
    return out.astype(np.uint8)


def save_grid(path: str | Path, config: SynthConfig | None = None, n: int = 12,
              columns: int = 6) -> Path:
    """Save ``n`` samples (image above its mask overlay, one caption) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    sp = plan(config or SynthConfig(n_ids=40, seed=0))
    # one image per identity, spread over the data set so views and cameras vary
    seen: set[int] = set()
    specs = []
    for spec in sp.samples:
        if spec.pid and spec.pid not in seen and spec.idx == spec.pid % 4:
            seen.add(spec.pid)
            specs.append(spec)
        if len(specs) == n:
            break
    rows = -(-len(specs) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.3 * columns, 3.4 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, spec in zip(axes.ravel(), specs, strict=False):
        sample = render_sample(sp, spec)
        r = sample.rendered
        ax.imshow(np.concatenate([r.image, overlay(r.image, r.labels)], axis=1),
                  interpolation="nearest")
        caption = sample.captions[0]
        ax.set_title(f"{spec.name[:-4]} ({r.view.viewpoint})", fontsize=7)
        ax.text(0.0, -0.02, "\n".join(textwrap.wrap(caption.text, 40)), fontsize=6,
                transform=ax.transAxes, va="top", ha="left")
    handles = [Patch(color=PART_COLOURS[i] / 255, label=p) for i, p in enumerate(PARTS)]
    fig.legend(handles=handles, loc="lower center", ncol=len(PARTS), fontsize=7, frameon=False)
    fig.suptitle("SynthPedes: image | part masks, first caption (seed 0)", fontsize=9)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.94, bottom=0.13, hspace=0.42, wspace=0.05)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
