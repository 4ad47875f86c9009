"""The report's figures (matplotlib, Agg): what a reader would rather look at than read.

Every function takes plain arrays (uint8 images, float maps, bool masks) and a path, writes one
PNG and returns its path. Nothing here computes a score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

PART_COLOURS = np.array([[228, 26, 28], [55, 126, 184], [77, 175, 74], [152, 78, 163],
                         [255, 127, 0], [255, 255, 51], [166, 86, 40], [247, 129, 191],
                         [153, 153, 153], [0, 200, 200]], dtype=np.float64) / 255
MATCH, MISS = "#1a9641", "#d7191c"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path, dpi: int = 110) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    _plt().close(fig)
    return path


def _frame(ax, colour: str | None = None, width: float = 3.0) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(colour is not None)
        if colour is not None:
            spine.set_edgecolor(colour)
            spine.set_linewidth(width)


def parts_image(image: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The image dimmed, each part mask painted in its colour (background stays dark)."""
    base = image.astype(np.float64) / 255
    out = base * 0.25
    for k, mask in enumerate(masks):
        out[mask] = 0.35 * base[mask] + 0.65 * PART_COLOURS[k % len(PART_COLOURS)]
    return np.clip(out, 0, 1)


#: how a signed map is drawn (Captum ``visualize_image_attr``'s ``sign`` and
#: ``outlier_perc``): its absolute value, scaled so the top 2 % of the mass saturates
SIGNED_SIGN, SIGNED_OUTLIER_PERC = "absolute_value", 2.0


def signed_legend(sign: str = SIGNED_SIGN, outlier_perc: float = SIGNED_OUTLIER_PERC) -> str:
    """The column label that says how a signed map was drawn."""
    what = {"absolute_value": "|attr|", "positive": "attr > 0"}.get(sign, sign)
    return f"{what}, clipped at the top {outlier_perc:g} % of mass"


def signed_methods(methods: Sequence[str]) -> list[str]:
    """The registered attributions among ``methods`` whose maps are signed (``signed``)."""
    from ..plugin_api import manager as plugin_manager

    known = plugin_manager.registry("attributions")
    return [m for m in methods if m in known and getattr(known[m].obj, "signed", False)]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.55,
            sign: str | None = None, outlier_perc: float = SIGNED_OUTLIER_PERC) -> np.ndarray:
    """A map blended over the image with the jet colour map.

    ``sign=None``: a smooth non-negative map (Grad-CAM, occlusion on patches), min-max
    scaled. ``sign="absolute_value"`` or ``"positive"``: a signed pixel map (integrated
    gradients), normalised as Captum's ``visualize_image_attr`` does (``_normalize_attr``: the
    sign's values divided by the value where the cumulative mass reaches ``100 -
    outlier_perc`` %, clipped to [0, 1]); each pixel is then tinted in proportion to its
    value, so pixels with no attribution show the photo instead of a uniform wash."""
    plt = _plt()
    h = heat.astype(np.float64)
    base = image.astype(np.float64) / 255
    if sign is None:
        h = (h - h.min()) / (h.max() - h.min()) if h.max() > h.min() else np.zeros_like(h)
        colour = plt.get_cmap("jet")(h)[..., :3]
        return (1 - alpha) * base + alpha * colour
    from captum.attr._utils.visualization import _normalize_attr

    h = np.clip(_normalize_attr(h, sign, outlier_perc), 0, 1) if np.abs(h).sum() > 0 else h
    weight = (alpha * h)[..., None]
    return (1 - weight) * base + weight * plt.get_cmap("jet")(h)[..., :3]


def ranked_lists(query: Sequence[np.ndarray], gallery: Sequence[Sequence[np.ndarray]],
                 matches: np.ndarray, scores: np.ndarray, path: str | Path,
                 titles: Sequence[str] | None = None) -> Path:
    """One row per query: the query, then its top-k gallery images framed green (same
    identity) or red, with their cosine similarity."""
    plt = _plt()
    n, k = matches.shape
    fig, axes = plt.subplots(n, k + 1, figsize=(1.1 * (k + 1), 2.1 * n), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(query[i])
        axes[i, 0].set_title(titles[i] if titles else "query", fontsize=7)
        _frame(axes[i, 0], "black", 2)
        for j in range(k):
            axes[i, j + 1].imshow(gallery[i][j])
            axes[i, j + 1].set_title(f"#{j + 1} {scores[i, j]:.2f}", fontsize=7,
                                     color=MATCH if matches[i, j] else MISS)
            _frame(axes[i, j + 1], MATCH if matches[i, j] else MISS)
    return _save(fig, path)


def map_grid(rows: Sequence[Mapping], methods: Sequence[str], path: str | Path,
             signed: Sequence[str] = ()) -> Path:
    """Rows of (label, image, part masks or None, {method: map}): the image, its ground-truth
    parts, then each method's map over it; methods in ``signed`` are drawn as signed maps
    (:func:`overlay`), their column saying how."""
    plt = _plt()
    with_parts = any(r.get("masks") is not None for r in rows)
    cols = 1 + int(with_parts) + len(methods)
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.05 * cols, 2.1 * len(rows)),
                             squeeze=False)
    for i, row in enumerate(rows):
        axes[i, 0].imshow(row["image"])
        axes[i, 0].set_ylabel(row["label"], fontsize=7)
        _frame(axes[i, 0])
        c = 1
        if with_parts:
            if row.get("masks") is not None:
                axes[i, 1].imshow(parts_image(row["image"], row["masks"]))
            _frame(axes[i, 1])
            c = 2
        for j, method in enumerate(methods):
            ax = axes[i, c + j]
            if method in row["maps"]:
                ax.imshow(overlay(row["image"], row["maps"][method],
                                  sign=SIGNED_SIGN if method in signed else None))
            _frame(ax)
        if i == 0:
            axes[0, 0].set_title("image", fontsize=7)
            if with_parts:
                axes[0, 1].set_title("ground truth", fontsize=7)
            for j, method in enumerate(methods):
                title = method.replace("_", " ")
                if method in signed:
                    title += "\n" + signed_legend().replace(", ", ",\n")
                axes[0, c + j].set_title(title, fontsize=6 if method in signed else 7)
    return _save(fig, path)


def interval_bars(rows: Sequence[Mapping], path: str | Path, xlabel: str,
                  reference: float | None = None) -> Path:
    """Horizontal bars with 95% intervals: rows of (label, value, low, high, colour)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 0.45 * len(rows) + 0.9))
    y = np.arange(len(rows))[::-1]
    values = np.array([r["value"] for r in rows])
    err = np.array([[r["value"] - r["low"], r["high"] - r["value"]] for r in rows]).T
    ax.barh(y, values, xerr=err, color=[r.get("colour", "#4575b4") for r in rows],
            capsize=3, height=0.6)
    ax.set_yticks(y, [r["label"] for r in rows], fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    if reference is not None:
        ax.axvline(reference, color="grey", linestyle="--", linewidth=1)
    ax.tick_params(axis="x", labelsize=8)
    return _save(fig, path)


def curves(panels: Mapping[str, Mapping[str, tuple[np.ndarray, np.ndarray]]],
           path: str | Path, xlabel: str = "fraction of cells perturbed",
           ylabel: str = "cosine to the match") -> Path:
    """One panel per curve kind: {label: (x, y)} lines (e.g. deletion and insertion)."""
    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.0), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels.items(), strict=True):
        for label, (x, yv) in lines.items():
            ax.plot(x, yv, marker="o", markersize=3, label=label,
                    linestyle="--" if label == "random" else "-",
                    color="grey" if label == "random" else None)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    return _save(fig, path)


def randomization(curves_by_method: Mapping[str, tuple[list[str], list[float]]],
                  threshold: float, path: str | Path) -> Path:
    """Map similarity to the trained model's maps as layers are randomised, top first."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    labels: list[str] = []
    for method, (steps, values) in curves_by_method.items():
        ax.plot(range(len(values)), values, marker="o", markersize=3, label=method)
        labels = steps
    ax.axhline(threshold, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(labels)), [s if len(s) < 22 else s[:20] + "…" for s in labels],
                  rotation=35, ha="right", fontsize=6)
    ax.set_ylabel("Spearman |map| vs trained", fontsize=8)
    ax.set_ylim(-0.1, 1.05)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=7)
    return _save(fig, path)


def phrase_panels(rows: Sequence[Mapping], path: str | Path) -> Path:
    """Per caption: the image, then for each phrase its ground-truth part (where the data has
    part masks) and its map."""
    plt = _plt()
    truth = any(p.get("mask") is not None for r in rows for p in r["phrases"])
    step = 2 if truth else 1
    width = max(1 + step * len(r["phrases"]) for r in rows)
    fig, axes = plt.subplots(len(rows), width, figsize=(0.95 * width, 2.3 * len(rows)),
                             squeeze=False)
    for i, row in enumerate(rows):
        for ax in axes[i]:
            _frame(ax)
            ax.axis("off")
        axes[i, 0].axis("on")
        axes[i, 0].imshow(row["image"])
        axes[i, 0].set_title("image", fontsize=6)
        for j, phrase in enumerate(row["phrases"]):
            b = axes[i, step * (j + 1)]
            b.axis("on")
            b.imshow(overlay(row["image"], phrase["map"]))
            energy = phrase.get("energy")
            scored = f" E={energy:.2f}" if energy is not None else ""
            if truth:
                a = axes[i, 1 + 2 * j]
                a.axis("on")
                if phrase.get("mask") is not None:
                    a.imshow(parts_image(row["image"], phrase["mask"][None]))
                a.set_title(f"{phrase['text'][:18]}\n(truth)", fontsize=6)
                b.set_title("map" + scored, fontsize=6)
            else:
                b.set_title(f"{phrase['text'][:18]}", fontsize=6)
    return _save(fig, path)


def word_relevance(words: Sequence[tuple[str, float]], path: str | Path, title: str) -> Path:
    """A caption's words as bars of relevance (red supports the match, blue speaks against)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.32 * len(words)), 2.0))
    values = np.array([r for _, r in words])
    ax.bar(range(len(words)), values, color=np.where(values >= 0, "#d7301f", "#2b8cbe"))
    ax.set_xticks(range(len(words)), [w for w, _ in words], rotation=60, ha="right",
                  fontsize=7)
    ax.set_title(title, fontsize=8)
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, path)


def text_ranked(captions: Sequence[str], gallery: Sequence[Sequence[np.ndarray]],
                matches: np.ndarray, scores: np.ndarray, path: str | Path) -> Path:
    """One row per caption: its top-k images framed green (described person) or red."""
    plt = _plt()
    n, k = matches.shape
    fig, axes = plt.subplots(n, k, figsize=(1.1 * k + 3.2, 2.1 * n), squeeze=False)
    for i in range(n):
        for j in range(k):
            axes[i, j].imshow(gallery[i][j])
            axes[i, j].set_title(f"#{j + 1} {scores[i, j]:.2f}", fontsize=7,
                                 color=MATCH if matches[i, j] else MISS)
            _frame(axes[i, j], MATCH if matches[i, j] else MISS)
        axes[i, k - 1].text(1.15, 0.5, _wrap(captions[i], 38), transform=axes[i, k - 1].transAxes,
                            fontsize=7, va="center")
    return _save(fig, path)


def _wrap(text: str, width: int) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
