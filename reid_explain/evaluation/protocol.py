"""The evaluation protocol: explain every query against its true match, then score the maps.

For each query the *true match* is the gallery image of the same identity that the model ranks
highest among the valid ones (Market-1501 protocol: same identity from the same camera is not a
valid match). Queries without a valid match are skipped and counted. Queries are explained in
batches (one batched attribution per batch); every metric plugin receives a
:class:`~reid_explain.metric.MetricContext` with the unmodified gallery's embeddings, the
identities and cameras, and (where the data set has them) ground-truth part masks. Each metric
can also be computed on uniform random maps of the same shape (``random_baseline=True``), so
every number comes with the value a map that knows nothing would get.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from .. import plugin_manager
from .._io import atomic_path
from ..errors import InputError, PluginError
from ..inputs import check_embeddings, check_images, check_same_size
from ..maps import GroundingMap, PairExplanation
from ..metric import MetricContext
from ..targets import CosineSimilarity

if TYPE_CHECKING:
    from ..interfaces import ExplainerLike


class ImageSource:
    """Uniform access to images held as a tensor or a torch Dataset (items: tensors, tuples
    whose first element is the image, or dicts with ``img``)."""

    def __init__(self, images: Any, name: str) -> None:
        self.images = images
        self.name = name
        if len(images) == 0:
            raise InputError(f"{name} holds no images")

    def __len__(self) -> int:
        return len(self.images)

    def _item(self, index: int) -> Tensor:
        item = self.images[index]
        if isinstance(item, dict):
            item = item["img"]
        elif isinstance(item, (tuple, list)):
            item = item[0]
        if not isinstance(item, Tensor) or item.dim() != 3:
            raise InputError(f"{self.name}[{index}] is not a (3, H, W) image tensor")
        return item

    def get(self, indices: Sequence[int]) -> Tensor:
        """The images ``indices`` as one batch (a data set's ``load_images(indices)`` where it
        has one: per-image decoding, batched normalisation)."""
        if isinstance(self.images, Tensor):
            return self.images[torch.as_tensor(list(indices), dtype=torch.long)]
        load = getattr(self.images, "load_images", None)
        if callable(load):
            batch = load([int(i) for i in indices])
            if not isinstance(batch, Tensor) or batch.dim() != 4 or len(batch) != len(indices):
                raise InputError(f"{self.name}.load_images returned "
                                 f"{tuple(getattr(batch, 'shape', ()))}, expected "
                                 f"({len(indices)}, 3, H, W) images")
            return batch
        return torch.stack([self._item(int(i)) for i in indices])


@dataclass
class ReidEvalSet:
    """Query and gallery images with identities, cameras and optional query part masks."""

    query: Any
    query_pids: np.ndarray
    query_camids: np.ndarray
    gallery: Any
    gallery_pids: np.ndarray
    gallery_camids: np.ndarray
    #: (Q, K, H, W) bool part masks of the query images at the images' size, or None
    query_masks: Tensor | None = None
    part_names: tuple[str, ...] = ()
    name: str = "data"
    #: (G, K, H, W) bool part masks of the gallery images, or None (figures only)
    gallery_masks: Tensor | None = None

    def __post_init__(self) -> None:
        self.query_pids = np.asarray(self.query_pids)
        self.query_camids = np.asarray(self.query_camids)
        self.gallery_pids = np.asarray(self.gallery_pids)
        self.gallery_camids = np.asarray(self.gallery_camids)
        for what, images, pids, cams in (("query", self.query, self.query_pids,
                                          self.query_camids),
                                         ("gallery", self.gallery, self.gallery_pids,
                                          self.gallery_camids)):
            if not (len(images) == len(pids) == len(cams)):
                raise InputError(f"{self.name}: {what} has {len(images)} images, {len(pids)} "
                                 f"pids and {len(cams)} camids")
        if self.query_masks is not None and len(self.query_masks) != len(self.query_pids):
            raise InputError(f"{self.name}: {len(self.query_masks)} query masks for "
                             f"{len(self.query_pids)} queries")

    @classmethod
    def from_market(cls, root: str | os.PathLike, transform: Callable | None = None,
                    side: dict[str, dict[str, Any]] | None = None) -> ReidEvalSet:
        """The query/gallery splits of a Market-1501-style folder; ``side`` (e.g. from
        :func:`~reid_explain.data.synth_side.load_synthpedes_side`) adds query part masks."""
        from ..data.datasets import ImageReidDataset

        query = ImageReidDataset(root, "query", transform=transform)
        gallery = ImageReidDataset(root, "gallery", transform=transform)
        masks, parts = None, ()
        if side is not None:
            size = tuple(query[0]["img"].shape[-2:])
            stacks = []
            for path, *_ in query.data:
                entry = side.get(str(Path(path).resolve()))
                if entry is None:
                    raise InputError(f"{path}: no part masks in the side mapping")
                m = torch.from_numpy(np.asarray(entry["masks"]))[None].float()
                stacks.append(torch.nn.functional.interpolate(m, size=size, mode="nearest")[0]
                              > 0.5)
                parts = tuple(entry["parts"])
            masks = torch.stack(stacks)
        return cls(query=query, query_pids=[d[1] for d in query.data],
                   query_camids=[d[2] for d in query.data], gallery=gallery,
                   gallery_pids=[d[1] for d in gallery.data],
                   gallery_camids=[d[2] for d in gallery.data], query_masks=masks,
                   part_names=parts, name=str(root))

    @classmethod
    def from_synthpedes(cls, root: str | os.PathLike,
                        transform: Callable | None = None) -> ReidEvalSet:
        """A SynthPedes export, with the ground-truth part masks of every query."""
        from ..data.synth_side import load_synthpedes_side

        return cls.from_market(root, transform=transform, side=load_synthpedes_side(root))


@dataclass
class EvaluationResult:
    """Tidy per-query values (one row per query x metric value) and data-set summaries."""

    table: pd.DataFrame
    summary: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``per_query.csv``, ``summary.csv`` and ``summary.json`` (all or nothing)."""
        import json

        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            self.table.to_csv(tmp / "per_query.csv", index=False)
            self.summary.to_csv(tmp / "summary.csv", index=False)
            records = {"info": self.info, "summary": self.summary.to_dict(orient="records")}
            (tmp / "summary.json").write_text(json.dumps(records, indent=2, default=str))
        return Path(directory)


def true_matches(query_emb: Tensor, gallery_emb: Tensor, query_pids: np.ndarray,
                 query_camids: np.ndarray, gallery_pids: np.ndarray,
                 gallery_camids: np.ndarray) -> np.ndarray:
    """Index of each query's highest-ranked valid true match, or -1 if it has none."""
    sims = (query_emb @ gallery_emb.T).cpu().numpy()
    same = query_pids[:, None] == gallery_pids[None, :]
    valid = same & ~(query_camids[:, None] == gallery_camids[None, :])
    sims = np.where(valid, sims, -np.inf)
    best = sims.argmax(axis=1)
    return np.where(valid.any(axis=1), best, -1)


def random_maps(explanation: PairExplanation, generator: torch.Generator) -> PairExplanation:
    """The same explanation with every map replaced by uniform random values."""
    sides = {}
    for side in ("query", "gallery"):
        grounding = getattr(explanation, side)
        if grounding is not None:
            grid = grounding.on_grid()
            sides[side] = replace(grounding, maps=torch.rand(grid.shape, generator=generator),
                                  method="random")
    return replace(explanation, method="random", **sides)


def explain_matches(explainer: ExplainerLike, query: Tensor, gallery: Tensor,
                    query_emb: Tensor, gallery_emb: Tensor, method: str,
                    options: dict[str, Any] | None = None) -> PairExplanation:
    """``explainer.explain(query, gallery, method, pairs=[(i, i), ...], **options)`` on
    images whose embeddings the caller has already (``evaluate`` embedded every image once):
    only the attribution runs the host.

    ``query[i]`` is explained against ``gallery[i]``; ``query_emb`` / ``gallery_emb`` are
    their L2-normalised embeddings. ``options`` are ``explain``'s: ``side``,
    ``internal_batch_size``, ``baselines`` and the method's own.
    """
    options = dict(options or {})
    for name in ("pairs", "top_k"):
        if name in options:
            raise InputError(f"method option {name!r}: evaluate explains each query against "
                             "its true match")
    side = options.pop("side", "both")
    if side not in ("both", "query", "gallery"):
        raise InputError(f"side must be one of ('both', 'query', 'gallery'), got {side!r}")
    adapter = explainer.adapter
    query = check_images(query, "query", adapter)
    gallery = check_images(gallery, "gallery", adapter)
    check_same_size(query, gallery, ("query", "gallery"))
    if not (len(query) == len(gallery) == len(query_emb) == len(gallery_emb)):
        raise InputError(f"{len(query)} query images, {len(gallery)} gallery images, "
                         f"{len(query_emb)} and {len(gallery_emb)} embeddings: need one each "
                         "per pair")
    check_embeddings(query_emb, "query")
    check_embeddings(gallery_emb, "gallery")
    n = len(query)
    pairs = torch.arange(n)[:, None].repeat(1, 2)
    scores = (query_emb @ gallery_emb.T)[pairs[:, 0], pairs[:, 1]].cpu()
    parts = []
    if side in ("both", "query"):
        parts.append(("query", query, gallery_emb))
    if side in ("both", "gallery"):
        parts.append(("gallery", gallery, query_emb))
    maps = explainer.attribute(torch.cat([p[1] for p in parts]),
                               CosineSimilarity(torch.cat([p[2] for p in parts])),
                               method=method, baselines=options.pop("baselines", None),
                               internal_batch_size=options.pop("internal_batch_size", None),
                               **options)
    size = (int(query.shape[-2]), int(query.shape[-1]))
    labels = [f"q{i}-g{i}" for i in range(n)]
    result: dict[str, GroundingMap | None] = {"query": None, "gallery": None}
    for k, (name, images, references) in enumerate(parts):
        result[name] = GroundingMap(
            maps=maps[k * n:(k + 1) * n], scores=scores, method=method, image_size=size,
            grid_size=adapter.grid_size(size), images=images.detach().cpu(), labels=labels,
            references=references.detach().cpu(), pixel_mean=adapter.pixel_mean,
            pixel_std=adapter.pixel_std)
    return PairExplanation(pairs=pairs, scores=scores, method=method, query=result["query"],
                           gallery=result["gallery"])


class _Clock:
    """Seconds spent per stage of one evaluation."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def _progress(iterable: Any, total: int, enabled: bool, desc: str) -> Any:
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False)


class BatchStore:
    """Completed query batches of one evaluation, one file each, so a killed run resumes.

    Each batch's rows and values are written atomically to ``<folder>/batch_<start>.json``;
    ``run.json`` holds the run's fingerprint (data, method, metrics, options), and a resume
    with another fingerprint is refused rather than mixing two runs.
    """

    def __init__(self, folder: str | os.PathLike, fingerprint: dict[str, Any],
                 resume: bool) -> None:
        import json
        import shutil

        self.folder = Path(folder)
        marker = self.folder / "run.json"
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        if self.folder.exists() and resume:
            if not marker.is_file() or marker.read_text() != text:
                raise InputError(f"{self.folder}: holds batches of a different evaluation "
                                 "(data, method, metrics or options differ); run without "
                                 "--resume to start over")
        elif self.folder.exists():
            shutil.rmtree(self.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        if not marker.is_file():
            with atomic_path(marker) as tmp:
                tmp.write_text(text)

    def _path(self, start: int) -> Path:
        return self.folder / f"batch_{start:08d}.json"

    def load(self, start: int) -> dict[str, Any] | None:
        import json

        path = self._path(start)
        return json.loads(path.read_text()) if path.is_file() else None

    def save(self, start: int, record: dict[str, Any]) -> None:
        import json

        with atomic_path(self._path(start)) as tmp:
            tmp.write_text(json.dumps(record))


def evaluate(explainer: ExplainerLike, data: ReidEvalSet, method: str = "gradcam",
             metrics: Sequence[str] = ("counterfactual_masking",), *,
             masker: str = "mean", masker_options: dict[str, Any] | None = None,
             batch_size: int = 16, max_queries: int | None = None, seed: int = 0,
             random_baseline: bool = True, progress: bool = True,
             method_options: dict[str, Any] | None = None,
             metric_options: dict[str, dict[str, Any]] | None = None,
             checkpoint: str | os.PathLike | None = None,
             resume: bool = False,
             log: Callable[[str], None] | None = None) -> EvaluationResult:
    """Explain each query against its true match with ``method`` and score with ``metrics``.

    With ``checkpoint`` (a folder), every completed batch of queries is written there
    atomically; ``resume=True`` reuses the batches a killed run completed and computes the
    rest, with results identical to an uninterrupted run (each batch's random maps are seeded
    from ``seed`` and the batch's first query).

    ``progress`` shows tqdm bars for the gallery and the query batches; ``log`` (e.g.
    ``print``) receives one line per stage, and one per query batch when the bars are off, so
    a run whose output is not a terminal still says where it is.

    Every image is embedded once, without gradients (the gallery up front, each batch's
    queries with it): the attribution, the metrics (``MetricContext.embeddings``) and the
    random-map baseline reuse those embeddings, and masked copies embedded for the method's
    maps are reused for the baseline's where they coincide (``MetricContext.masked_cache``).
    ``info["timing"]`` gives the seconds per stage (``load``, ``embed``, ``explain``,
    ``metrics``), ``queries_per_s`` and ``forward_limit_queries_per_s``: the queries computed
    in this run over the time of the one no-grad embedding pass of all their images, the speed
    an evaluation could not beat.
    """
    metric_options = metric_options or {}
    entries = [plugin_manager.get("metrics", name) for name in metrics]
    masker_entry = plugin_manager.get("maskers", masker)
    masker_obj = masker_entry.obj(**(masker_options or {}))
    plugin_manager.get("attributions", method)
    query_src = ImageSource(data.query, "query")
    gallery_src = ImageSource(data.gallery, "gallery")
    n_gallery = len(gallery_src)
    clock = _Clock()
    started = time.perf_counter()
    if log is not None:
        log(f"embedding gallery: {n_gallery} images")
    chunks = []
    for s in _progress(range(0, n_gallery, 64), math.ceil(n_gallery / 64), progress,
                       "embed gallery"):
        with clock("load"):
            chunk = gallery_src.get(range(s, min(s + 64, n_gallery)))
        with clock("embed"):
            chunks.append(explainer.embed(chunk))
    gallery_emb = torch.cat(chunks)
    computed = 0
    n_queries = len(query_src) if max_queries is None else min(max_queries, len(query_src))
    rows: list[dict[str, Any]] = []
    collected: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {}
    skipped = 0
    store = None if checkpoint is None else BatchStore(checkpoint, {
        "data": data.name, "queries": n_queries, "gallery": n_gallery, "method": method,
        "metrics": list(metrics), "masker": masker, "masker_options": masker_options,
        "batch_size": batch_size, "seed": seed, "random_baseline": random_baseline,
        "method_options": method_options, "metric_options": metric_options}, resume)
    batches = range(0, n_queries, batch_size)
    n_batches = math.ceil(n_queries / batch_size)
    for k, start in enumerate(_progress(batches, n_batches, progress, f"evaluate {method}")):
        done = None if store is None else store.load(start)
        if log is not None and not progress:
            end = min(start + batch_size, n_queries)
            log(f"{'reusing' if done is not None else 'explaining'} batch {k + 1}/{n_batches} "
                f"(queries {start}-{end - 1}, {method} + {len(entries)} metric(s))")
        if done is not None:
            rows.extend(done["rows"])
            skipped += done["skipped"]
            for variant, name, key, values in done["values"]:
                collected.setdefault((variant, name), {}).setdefault(key, []).append(
                    np.asarray(values, dtype=np.float64))
            continue
        batch_rows: list[dict[str, Any]] = []
        batch_values: list[tuple[str, str, str, list[float]]] = []
        batch_skipped = 0
        generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
        idx = np.arange(start, min(start + batch_size, n_queries))
        computed += len(idx)
        with clock("load"):
            query_images = query_src.get(idx)
        with clock("embed"):
            q_emb = explainer.embed(query_images)
        match = true_matches(q_emb, gallery_emb, data.query_pids[idx], data.query_camids[idx],
                             data.gallery_pids, data.gallery_camids)
        keep = match >= 0
        batch_skipped = int((~keep).sum())
        variants = []
        embeddings: dict[str, Tensor] = {}
        if keep.any():
            idx, match = idx[keep], match[keep]
            kept = torch.as_tensor(keep)
            query_images, q_emb = query_images[kept], q_emb[kept.to(q_emb.device)]
            with clock("load"):
                match_images = gallery_src.get(match)
            g_emb = gallery_emb[torch.as_tensor(match)]
            with clock("explain"):
                explanation = explain_matches(explainer, query_images, match_images, q_emb,
                                              g_emb, method, method_options)
            embeddings = {"query": q_emb, "gallery": g_emb}
            variants = [(method, explanation)]
            if random_baseline:
                variants.append(("random", random_maps(explanation, generator)))
        masked_cache: dict[Any, Tensor] = {}  # masked copies shared by the batch's variants
        for variant, expl in variants:
            context = MetricContext(
                explainer=explainer, explanation=expl, masker=masker_obj, seed=seed + start,
                gallery_embeddings=gallery_emb,
                gallery_pids=torch.as_tensor(data.gallery_pids),
                gallery_camids=torch.as_tensor(data.gallery_camids),
                query_pids=torch.as_tensor(data.query_pids[idx]),
                query_camids=torch.as_tensor(data.query_camids[idx]),
                gallery_index=torch.as_tensor(match),
                query_masks=None if data.query_masks is None else data.query_masks[idx],
                part_names=data.part_names, embeddings=embeddings, masked_cache=masked_cache)
            for entry in entries:
                metric = entry.obj(**metric_options.get(entry.name, {}))
                with clock("metrics"), explainer.guard:
                    try:
                        values = metric.compute(context)
                    except Exception as exc:
                        raise PluginError(f"metric {entry.name!r} from plugin {entry.plugin!r} "
                                          f"raised {type(exc).__name__}: {exc}") from exc
                for key, value in values.items():
                    array = np.asarray(torch.as_tensor(value).detach().cpu().float().numpy(),
                                       dtype=np.float64).reshape(-1)
                    if len(array) != len(idx):
                        raise PluginError(f"metric {entry.name!r} returned {len(array)} values "
                                          f"for {key!r}, expected one per query ({len(idx)})")
                    batch_values.append((variant, entry.name, key, array.tolist()))
                    batch_rows.extend({"query": int(q), "pid": data.query_pids[q].item(),
                                       "match": int(m), "method": variant,
                                       "metric": entry.name, "key": key, "value": float(v)}
                                      for q, m, v in zip(idx, match, array, strict=True))
        if store is not None:
            store.save(start, {"rows": batch_rows, "values": batch_values,
                               "skipped": batch_skipped})
        rows.extend(batch_rows)
        skipped += batch_skipped
        for variant, name, key, values in batch_values:
            collected.setdefault((variant, name), {}).setdefault(key, []).append(
                np.asarray(values, dtype=np.float64))
    summary_rows = []
    for (variant, name), store in collected.items():
        metric = plugin_manager.get("metrics", name).obj(**metric_options.get(name, {}))
        values = {k: np.concatenate(v) for k, v in store.items()}
        for key, value in metric.summarize(values).items():
            summary_rows.append({"method": variant, "metric": name, "key": key,
                                 "value": float(value),
                                 "higher_is_better": metric.higher_is_better})
    total = time.perf_counter() - started
    timing = {f"{stage}_s": clock.seconds.get(stage, 0.0)
              for stage in ("load", "embed", "explain", "metrics")}
    timing.update({"total_s": total, "queries_computed": computed,
                   "queries_per_s": computed / total if total > 0 else float("nan"),
                   "forward_limit_queries_per_s": computed / timing["embed_s"]
                   if timing["embed_s"] > 0 else float("nan")})
    info = {"data": data.name, "method": method, "metrics": list(metrics), "masker": masker,
            "queries": n_queries, "skipped_no_valid_match": skipped,
            "gallery": len(gallery_src), "seed": seed, "adapter": explainer.adapter.describe(),
            "timing": timing}
    return EvaluationResult(table=pd.DataFrame(rows, columns=["query", "pid", "match", "method",
                                                              "metric", "key", "value"]),
                            summary=pd.DataFrame(summary_rows, columns=[
                                "method", "metric", "key", "value", "higher_is_better"]),
                            info=info)
