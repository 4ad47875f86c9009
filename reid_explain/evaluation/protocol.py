"""The evaluation protocol: explain every query against its true match, then score the maps.

For each query the *true match* is the gallery image of the same identity that the model ranks
highest among the valid ones (Market-1501 protocol: same identity from the same camera is not a
valid match). Queries without a valid match are skipped and counted. Queries are explained in
batches (one batched attribution per batch); every metric plugin receives a
:class:`~reid_explain.plugin_api.metric.MetricContext` with the unmodified gallery's embeddings, the
identities and cameras, and (where the data set has them) ground-truth part masks. Each metric
is also computed on uniform random maps of the same shape (``random_baseline=True``) and on the
image-blind reference's maps (``reference``, :mod:`.references`): every number comes with the
value a map that knows nothing would get, and the value of the best map drawn without looking
at the image; :mod:`.verdicts` says, per figure, whether the method beats each.
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

from .._util.io import atomic_path
from ..core.inputs import check_embeddings, check_images, check_same_size, pair_centre
from ..errors import InputError, PluginError
from ..plugin_api import manager as plugin_manager
from ..plugin_api.maps import GroundingMap, PairExplanation
from ..plugin_api.metric import MetricContext
from ..plugin_api.targets import similarity_target
from .distributed import Shard
from .references import ImageBlindReference, centred_prior, choose_reference
from .verdicts import compare

if TYPE_CHECKING:
    from ..plugin_api.interfaces import ExplainerLike


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
    #: the image-blind reference, learnt from images that are not scored (training or
    #: validation identities); None: ``evaluate`` uses a centred prior
    reference: ImageBlindReference | None = None

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
        :func:`~reid_explain.synthpedes.side.load_synthpedes_side`) adds query part masks."""
        from ..data.datasets import ImageReidDataset

        query = ImageReidDataset(root, "query", transform=transform)
        gallery = ImageReidDataset(root, "gallery", transform=transform)
        masks, parts, reference = None, (), None
        if side is not None:
            size = tuple(query[0]["img"].shape[-2:])

            def resized(entry: dict[str, Any]) -> Tensor:
                m = torch.from_numpy(np.asarray(entry["masks"]))[None].float()
                return torch.nn.functional.interpolate(m, size=size, mode="nearest")[0] > 0.5

            stacks = []
            for path, *_ in query.data:
                entry = side.get(str(Path(path).resolve()))
                if entry is None:
                    raise InputError(f"{path}: no part masks in the side mapping")
                stacks.append(resized(entry))
                parts = tuple(entry["parts"])
            masks = torch.stack(stacks)
            reference = _training_reference(root, side, resized)
        return cls(query=query, query_pids=[d[1] for d in query.data],
                   query_camids=[d[2] for d in query.data], gallery=gallery,
                   gallery_pids=[d[1] for d in gallery.data],
                   gallery_camids=[d[2] for d in gallery.data], query_masks=masks,
                   part_names=parts, name=str(root), reference=reference)

    @classmethod
    def from_synthpedes(cls, root: str | os.PathLike,
                        transform: Callable | None = None) -> ReidEvalSet:
        """A SynthPedes export, with the ground-truth part masks of every query."""
        from ..synthpedes.side import load_synthpedes_side

        return cls.from_market(root, transform=transform, side=load_synthpedes_side(root))


def _training_reference(root: str | os.PathLike, side: dict[str, dict[str, Any]],
                        resized: Callable[[dict[str, Any]], Tensor]
                        ) -> ImageBlindReference | None:
    """The image-blind reference from the masks of the training images
    (``bounding_box_train``) only, or None where the side files hold too few of them."""
    train = [(path, entry) for path, entry in sorted(side.items())
             if "bounding_box_train" in Path(path).parts and "masks" in entry]
    pids = [int(entry.get("pid", -1)) for _, entry in train]
    if len(set(pids)) < 2:
        return None
    return choose_reference(torch.stack([resized(entry) for _, entry in train]), pids,
                            source=f"{root}: masks of the training images (bounding_box_train)")


@dataclass
class EvaluationResult:
    """Tidy per-query values (one row per query x metric value) and data-set summaries."""

    table: pd.DataFrame
    summary: pd.DataFrame
    info: dict[str, Any] = field(default_factory=dict)
    #: one row per figure: the method beside random maps and the image-blind reference, paired
    #: differences with 95 % CIs and verdicts (:func:`.verdicts.compare`)
    comparison: pd.DataFrame | None = None
    #: the ``(D,)`` centre the maps' score was taken about (``score="centred"``), else None:
    #: more maps of the same pairs (``explain(..., centre=result.centre)``) explain the same score
    centre: Tensor | None = None

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``per_query.csv``, ``summary.csv``, ``comparison.csv`` and ``summary.json``
        (all or nothing)."""
        import json

        from .verdicts import json_records

        with atomic_path(directory) as tmp:
            tmp.mkdir(parents=True)
            self.table.to_csv(tmp / "per_query.csv", index=False)
            self.summary.to_csv(tmp / "summary.csv", index=False)
            records: dict[str, Any] = {"info": self.info,
                                       "summary": json_records(self.summary)}
            if self.comparison is not None:
                self.comparison.to_csv(tmp / "comparison.csv", index=False)
                records["comparison"] = json_records(self.comparison)
            (tmp / "summary.json").write_text(json.dumps(records, indent=2, default=str,
                                                         allow_nan=False))
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


def reference_maps(explanation: PairExplanation,
                   reference: ImageBlindReference) -> PairExplanation:
    """The same explanation with every map replaced by the image-blind reference's map, at
    image size (scored like any method's maps: masked on the same model, compared with the
    same masks)."""
    sides = {}
    for side in ("query", "gallery"):
        grounding = getattr(explanation, side)
        if grounding is not None:
            sides[side] = replace(grounding, maps=reference.maps(len(grounding),
                                                                 grounding.image_size),
                                  method="reference")
    return replace(explanation, method="reference", **sides)


def resolve_reference(reference: ImageBlindReference | str | None, data: ReidEvalSet,
                      size: tuple[int, int]) -> ImageBlindReference | None:
    """``"auto"``: the data set's own reference (learnt from images it does not score), else a
    centred prior at the images' size; ``"centred"``; an :class:`ImageBlindReference`; or None
    (none)."""
    if reference is None or isinstance(reference, ImageBlindReference):
        return reference
    if reference == "auto":
        return data.reference if data.reference is not None else centred_prior(size)
    if reference == "centred":
        return centred_prior(size)
    raise InputError(f"reference must be 'auto', 'centred', an ImageBlindReference or None, "
                     f"got {reference!r}")


#: the pair scores ``evaluate`` can explain (``score=``)
SCORES = ("centred", "cosine")


def check_score(score: str) -> None:
    if score not in SCORES:
        raise InputError(f"score must be one of {SCORES}, got {score!r}")


def score_centre(score: str, gallery_emb: Tensor) -> Tensor | None:
    """The centre ``score`` takes the pair cosine about: the gallery's mean normalised
    embedding for ``"centred"``, None for ``"cosine"``."""
    check_score(score)
    if score == "cosine":
        return None
    if len(gallery_emb) < 2:
        raise InputError(f"score='centred' needs two gallery images or more, got "
                         f"{len(gallery_emb)} (about one image's own embedding every pair "
                         "score is 0): pass score='cosine'")
    return pair_centre("gallery", gallery_emb)


def explain_matches(explainer: ExplainerLike, query: Tensor, gallery: Tensor,
                    query_emb: Tensor, gallery_emb: Tensor, method: str,
                    options: dict[str, Any] | None = None,
                    centre: Tensor | None = None) -> PairExplanation:
    """``explainer.explain(query, gallery, method, pairs=[(i, i), ...], **options)`` on
    images whose embeddings the caller has already (``evaluate`` embedded every image once):
    only the attribution runs the host.

    ``query[i]`` is explained against ``gallery[i]``; ``query_emb`` / ``gallery_emb`` are
    their L2-normalised embeddings. ``options`` are ``explain``'s: ``side``,
    ``internal_batch_size``, ``baselines`` and the method's own. ``centre`` (a ``(D,)``
    embedding, e.g. the whole gallery's mean) explains the centred score
    (:class:`~reid_explain.plugin_api.targets.CentredCosine`) instead of the cosine.
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
                               similarity_target(torch.cat([p[2] for p in parts]), centre),
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
                 resume: bool, shard: Shard | None = None) -> None:
        import json
        import shutil

        shard = shard or Shard()
        self.folder = Path(folder)
        marker = self.folder / "run.json"
        text = json.dumps(fingerprint, sort_keys=True, default=str)
        if shard.is_main:  # one process prepares the folder, the others wait for it
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
        shard.barrier()

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


def gallery_key(explainer: ExplainerLike, data: ReidEvalSet, gallery: ImageSource) -> dict:
    """What the gallery's features depend on: the host's weights and adapter, the images
    (file paths, sizes and modification times, or the tensor's values) and their transform,
    the labels, and torch's version (kernels may change the last bits)."""
    from .feature_cache import array_fingerprint, model_fingerprint, tensor_fingerprint

    images = gallery.images
    if isinstance(images, Tensor):
        content = tensor_fingerprint(images)
    elif hasattr(images, "data") and isinstance(images.data, list):
        files = []
        for item in images.data:
            path = Path(item[0])
            stat = path.stat() if path.is_file() else None
            files.append([str(path), stat.st_size if stat else -1,
                          stat.st_mtime_ns if stat else -1])
        content = array_fingerprint(np.asarray(files, dtype=object).astype(str))
    else:
        content = f"{type(images).__name__}:{data.name}"
    return {"model": model_fingerprint(explainer.model), "adapter": explainer.adapter.describe(),
            "data": data.name, "images": content, "count": len(gallery),
            "transform": repr(getattr(images, "transform", None)),
            "pids": array_fingerprint(data.gallery_pids),
            "camids": array_fingerprint(data.gallery_camids), "torch": torch.__version__}


GALLERY_CHUNK = 64  # images per gallery embedding unit (fixed: sharding cannot change batches)


def embed_gallery(explainer: ExplainerLike, gallery: ImageSource, shard: Shard,
                  clock: _Clock, progress: bool) -> Tensor:
    """L2-normalised features of every gallery image: chunks of :data:`GALLERY_CHUNK` images,
    chunk ``k`` embedded by rank ``k % world_size`` and gathered in order."""
    n = len(gallery)
    starts = range(0, n, GALLERY_CHUNK)
    mine: list[tuple[int, Tensor]] = []
    for k, s in _progress(list(shard.mine(starts)), math.ceil(len(starts) / shard.world_size),
                          progress, "embed gallery"):
        with clock("load"):
            chunk = gallery.get(range(s, min(s + GALLERY_CHUNK, n)))
        with clock("embed"):
            mine.append((k, explainer.embed(chunk).cpu()))
    parts = dict(item for rank_parts in shard.gather(mine) for item in rank_parts)
    return torch.cat([parts[k] for k in range(len(starts))])


def _score_batch(explainer: ExplainerLike, data: ReidEvalSet, query_src: ImageSource,
                 gallery_src: ImageSource, gallery_emb: Tensor, idx: np.ndarray, start: int,
                 method: str, entries: list, masker_obj: Any, seed: int, random_baseline: bool,
                 reference: ImageBlindReference | None,
                 method_options: dict[str, Any] | None,
                 metric_options: dict[str, dict[str, Any]], clock: _Clock,
                 centre: Tensor | None = None) -> dict[str, Any]:
    """One query batch explained and scored: its table rows, metric values and skip count
    (a function of the batch alone, so any process computes it the same)."""
    rows: list[dict[str, Any]] = []
    values_out: list[tuple[str, str, str, list[float]]] = []
    generator = torch.Generator().manual_seed(seed * 1_000_003 + start)
    with clock("load"):
        query_images = query_src.get(idx)
    with clock("embed"):
        q_emb = explainer.embed(query_images)
    gallery_emb = gallery_emb.to(q_emb.device)
    match = true_matches(q_emb, gallery_emb, data.query_pids[idx], data.query_camids[idx],
                         data.gallery_pids, data.gallery_camids)
    keep = match >= 0
    skipped = int((~keep).sum())
    variants = []
    embeddings: dict[str, Tensor] = {}
    if keep.any():
        idx, match = idx[keep], match[keep]
        kept = torch.as_tensor(keep)
        query_images, q_emb = query_images[kept], q_emb[kept.to(q_emb.device)]
        with clock("load"):
            match_images = gallery_src.get(match)
        g_emb = gallery_emb[torch.as_tensor(match).to(gallery_emb.device)]
        with clock("explain"):
            explanation = explain_matches(explainer, query_images, match_images, q_emb,
                                          g_emb, method, method_options,
                                          None if centre is None else centre.to(q_emb.device))
        embeddings = {"query": q_emb, "gallery": g_emb}
        variants = [(method, explanation)]
        if random_baseline:
            variants.append(("random", random_maps(explanation, generator)))
        if reference is not None:
            variants.append(("reference", reference_maps(explanation, reference)))
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
                values_out.append((variant, entry.name, key, array.tolist()))
                rows.extend({"query": int(q), "pid": data.query_pids[q].item(),
                             "match": int(m), "method": variant, "metric": entry.name,
                             "key": key, "value": float(v)}
                            for q, m, v in zip(idx, match, array, strict=True))
    return {"rows": rows, "values": values_out, "skipped": skipped}


def _timing(clocks: list[dict[str, float]], totals: list[float], computed: int,
            world_size: int) -> dict[str, Any]:
    """Seconds per stage (the slowest process's, as the processes run side by side), queries
    per second, and the no-grad forward limit of the same images."""
    timing: dict[str, Any] = {f"{stage}_s": max(c.get(stage, 0.0) for c in clocks)
                              for stage in ("load", "embed", "explain", "metrics")}
    total = max(totals)
    timing.update({"total_s": total, "queries_computed": computed, "world_size": world_size,
                   "queries_per_s": computed / total if total > 0 else float("nan"),
                   "forward_limit_queries_per_s": computed / timing["embed_s"]
                   if timing["embed_s"] > 0 else float("nan")})
    return timing


def evaluate(explainer: ExplainerLike, data: ReidEvalSet, method: str = "gradcam",
             metrics: Sequence[str] = ("counterfactual_masking",), *,
             masker: str = "mean", masker_options: dict[str, Any] | None = None,
             batch_size: int = 16, max_queries: int | None = None, seed: int = 0,
             random_baseline: bool = True,
             reference: ImageBlindReference | str | None = "auto", progress: bool = True,
             method_options: dict[str, Any] | None = None,
             metric_options: dict[str, dict[str, Any]] | None = None,
             checkpoint: str | os.PathLike | None = None,
             resume: bool = False,
             log: Callable[[str], None] | None = None,
             feature_cache: str | os.PathLike | None = None,
             distributed: bool | None = None, score: str = "centred") -> EvaluationResult:
    """Explain each query against its true match with ``method`` and score with ``metrics``.

    ``score`` is the pair score the maps explain: ``"centred"`` (default), the cosine minus
    each image's mean cosine with the whole gallery
    (:class:`~reid_explain.plugin_api.targets.CentredCosine`: the same ranking, with what every
    gallery image shares taken out), or ``"cosine"``, the plain cosine.

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

    ``feature_cache`` (a folder) keeps the gallery's features in a safetensors file keyed by
    the host's weights, the images and their transform (:mod:`.feature_cache`): a later run,
    of any method or metric, loads them instead of embedding the gallery again.

    Inside an initialised ``torch.distributed`` process group (``torchrun``; ``distributed``
    None or True) the gallery chunks and the query batches are shared round robin among the
    processes (:mod:`.distributed`) and gathered, so every process returns the result a
    single process computes; only rank 0 should write it. ``distributed=False`` ignores the
    group.

    ``reference`` is the image-blind reference scored beside the method (:mod:`.references`):
    ``"auto"`` takes ``data.reference`` (learnt from training masks; SynthPedes exports have
    it) and falls back to a centred prior; None scores none. ``result.comparison`` holds every
    figure beside random maps and the reference, with paired 95 % CIs and verdicts.
    """
    from .distributed import current_shard

    shard = current_shard(distributed)
    if shard.active:
        from .feature_cache import model_fingerprint

        prints = shard.gather(model_fingerprint(explainer.model))
        differ = [rank for rank, fp in enumerate(prints) if fp != prints[0]]
        if differ:
            raise InputError(f"the processes hold different host weights (ranks {differ} "
                             "differ from rank 0): load the same weights file on every "
                             "process (a randomly initialised host differs per process)")
    metric_options = metric_options or {}
    entries = [plugin_manager.get("metrics", name) for name in metrics]
    masker_entry = plugin_manager.get("maskers", masker)
    masker_obj = masker_entry.obj(**(masker_options or {}))
    plugin_manager.get("attributions", method)
    check_score(score)  # before any work
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive int, got {batch_size!r}")
    query_src = ImageSource(data.query, "query")
    gallery_src = ImageSource(data.gallery, "gallery")
    n_gallery = len(gallery_src)
    image_size = tuple(int(v) for v in query_src.get([0]).shape[-2:])
    reference_obj = resolve_reference(reference, data, image_size)
    clock = _Clock()
    started = time.perf_counter()
    say = log if log is not None and shard.is_main else None
    cache = key = gallery_emb = None
    if feature_cache is not None:
        from .feature_cache import FeatureCache

        cache = FeatureCache(feature_cache)
        key = gallery_key(explainer, data, gallery_src)
        gallery_emb = cache.load("gallery", key)
        if say is not None and gallery_emb is not None:
            say(f"gallery features: {cache.path('gallery', key)} ({n_gallery} images)")
    if gallery_emb is None:
        if say is not None:
            say(f"embedding gallery: {n_gallery} images"
                + (f" on {shard.world_size} processes" if shard.active else ""))
        gallery_emb = embed_gallery(explainer, gallery_src, shard, clock, progress)
        if cache is not None and shard.is_main:
            cache.save("gallery", key, gallery_emb)
    if len(gallery_emb) != n_gallery:
        raise InputError(f"{len(gallery_emb)} stored gallery features for {n_gallery} images")
    centre = score_centre(score, gallery_emb)
    n_queries = len(query_src) if max_queries is None else min(max_queries, len(query_src))
    store = None if checkpoint is None else BatchStore(checkpoint, {
        "data": data.name, "queries": n_queries, "gallery": n_gallery, "method": method,
        "metrics": list(metrics), "masker": masker, "masker_options": masker_options,
        "batch_size": batch_size, "seed": seed, "random_baseline": random_baseline,
        "reference": None if reference_obj is None else
        [reference_obj.name, tensor_digest(reference_obj.prior)],
        "method_options": method_options, "metric_options": metric_options,
        "score": score}, resume, shard)
    batches = range(0, n_queries, batch_size)
    n_batches = len(batches)
    records: dict[int, dict[str, Any]] = {}
    computed = 0
    mine = list(shard.mine(batches))
    for k, start in _progress(mine, len(mine), progress, f"evaluate {method}"):
        done = None if store is None else store.load(start)
        if say is not None and not progress:
            end = min(start + batch_size, n_queries)
            say(f"{'reusing' if done is not None else 'explaining'} batch {k + 1}/{n_batches} "
                f"(queries {start}-{end - 1}, {method} + {len(entries)} metric(s))")
        if done is None:
            idx = np.arange(start, min(start + batch_size, n_queries))
            computed += len(idx)
            done = _score_batch(explainer, data, query_src, gallery_src, gallery_emb, idx,
                                start, method, entries, masker_obj, seed, random_baseline,
                                reference_obj, method_options, metric_options, clock,
                                centre)
            if store is not None:
                store.save(start, done)
        records[start] = done
    gathered = shard.gather({"records": records, "computed": computed,
                             "clock": clock.seconds, "total": time.perf_counter() - started})
    records = {s: r for part in gathered for s, r in part["records"].items()}
    rows: list[dict[str, Any]] = []
    collected: dict[tuple[str, str], dict[str, list[np.ndarray]]] = {}
    skipped = 0
    for start in batches:  # batch order, whichever process computed each
        record = records[start]
        rows.extend(record["rows"])
        skipped += record["skipped"]
        for variant, name, key_name, values in record["values"]:
            collected.setdefault((variant, name), {}).setdefault(key_name, []).append(
                np.asarray(values, dtype=np.float64))
    summary_rows = []
    for (variant, name), per_key in collected.items():
        metric = plugin_manager.get("metrics", name).obj(**metric_options.get(name, {}))
        values = {k: np.concatenate(v) for k, v in per_key.items()}
        for key_name, value in metric.summarize(values).items():
            summary_rows.append({"method": variant, "metric": name, "key": key_name,
                                 "value": float(value),
                                 "higher_is_better": metric.higher_is_better})
    timing = _timing([p["clock"] for p in gathered], [p["total"] for p in gathered],
                     sum(p["computed"] for p in gathered), shard.world_size)
    info = {"data": data.name, "method": method, "score": score, "metrics": list(metrics),
            "masker": masker,
            "queries": n_queries, "skipped_no_valid_match": skipped,
            "gallery": len(gallery_src), "seed": seed, "adapter": explainer.adapter.describe(),
            "reference": None if reference_obj is None else reference_obj.to_json(),
            "timing": timing}
    table = pd.DataFrame(rows, columns=["query", "pid", "match", "method", "metric", "key",
                                        "value"])
    return EvaluationResult(table=table,
                            summary=pd.DataFrame(summary_rows, columns=[
                                "method", "metric", "key", "value", "higher_is_better"]),
                            info=info,
                            comparison=compare(table, method, metric_orientation(metric_options),
                                               seed=seed),
                            centre=None if centre is None else centre.cpu())


def metric_orientation(metric_options: dict[str, dict[str, Any]] | None = None
                       ) -> Callable[[str, str], bool | None]:
    """``(metric, key) -> bool | None``: each metric plugin's own :meth:`Metric.orientation`."""
    options = metric_options or {}
    cache: dict[str, Any] = {}

    def orientation(metric: str, key: str) -> bool | None:
        if metric not in cache:
            cache[metric] = plugin_manager.get("metrics", metric).obj(**options.get(metric, {}))
        return cache[metric].orientation(key)

    return orientation


def tensor_digest(tensor: Tensor) -> str:
    """A short hash of a tensor's values (fingerprints of checkpointed runs)."""
    import hashlib

    return hashlib.sha1(tensor.detach().cpu().float().contiguous().numpy().tobytes()
                        ).hexdigest()[:16]
