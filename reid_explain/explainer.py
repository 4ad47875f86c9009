"""``explainify(model)`` and the Explainer it returns.

The Explainer is the one object a user holds: it picks an adapter for the host, runs
attribution plugins on batches of (query, gallery) or (text, image) pairs, and scores
explanations with metric plugins. Every call runs inside a :class:`HostGuard`, so the host
leaves each call (and ``close()``) exactly as it came in.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import plugin_manager as plugins
from .adapter import Adapter
from .attribution import Attribution
from .errors import AdapterError, InputError, PluginError
from .host_guard import HostGuard
from .maps import GroundingMap, PairExplanation, TextImageExplanation, TokenRelevance
from .metric import MetricContext
from .targets import CosineSimilarity, Target

SIDES = ("both", "query", "gallery")


def _adapter_listing() -> str:
    entries = sorted(plugins.registry("adapters").values(), key=lambda e: -e.obj.priority)
    return "; ".join(f"{e.name} ({e.description})" for e in entries)


def choose_adapter(model: nn.Module, layer: str | nn.Module | None = None,
                   adapter: str | type[Adapter] | None = None) -> type[Adapter]:
    """The adapter class for ``model``: named, or the highest-priority one that matches."""
    if not isinstance(model, nn.Module):
        raise AdapterError(f"explainify needs a torch.nn.Module, got {type(model).__name__}")
    if isinstance(adapter, type):
        return adapter
    if adapter is not None:
        return plugins.get("adapters", adapter).obj
    candidates = sorted(plugins.registry("adapters").values(), key=lambda e: -e.obj.priority)
    for entry in candidates:
        try:
            if entry.obj.matches(model, layer=layer):
                return entry.obj
        except Exception as exc:
            raise PluginError(f"adapter {entry.name!r} from plugin {entry.plugin!r} raised in "
                              f"matches(): {type(exc).__name__}: {exc}") from exc
    raise AdapterError(
        f"no adapter recognises {type(model).__module__}.{type(model).__name__}. "
        f"Known adapters: {_adapter_listing()}. For any other model name its spatial layer: "
        "explainify(model, layer='name.of.layer') where the layer outputs (B, C, h, w) feature "
        "maps or (B, N, C) ViT tokens (see model.named_modules()), or pick one with "
        "adapter='name'.")


def explainify(model: nn.Module, layer: str | nn.Module | None = None,
               adapter: str | type[Adapter] | None = None, **adapter_options: Any) -> Explainer:
    """Wrap ``model`` for explanation; use as a context manager or call ``close()``."""
    cls = choose_adapter(model, layer=layer, adapter=adapter)
    with HostGuard(model):
        try:
            instance = cls(model, layer=layer, **adapter_options)
        except AdapterError:
            raise
        except TypeError as exc:
            raise AdapterError(f"adapter {cls.name!r}: {exc}") from exc
    return Explainer(instance)


def _check_images(images: Tensor, what: str, adapter: Adapter | None = None) -> Tensor:
    """Images checked, and with ``adapter`` normalised to what the host takes, before the host
    sees them: a batch dimension, the host's channel count (grey images are repeated to RGB),
    its parameters' dtype and device, and a size its spatial layer can map (at least one grid
    cell per axis). Every refusal names ``what`` and the reason."""
    if not isinstance(images, Tensor):
        raise InputError(f"{what} must be a torch.Tensor of images, got {type(images).__name__}")
    if images.dim() == 3:
        images = images[None]
    if images.dim() != 4:
        raise InputError(f"{what} must be (B, C, H, W) images, got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InputError(f"{what} must be a float tensor (normalised images), got {images.dtype}")
    if images.shape[0] == 0:
        raise InputError(f"{what} is empty")
    if not torch.isfinite(images).all():
        raise InputError(f"{what} contains NaN or inf values")
    if adapter is None:
        if images.shape[1] not in (1, 3):
            raise InputError(f"{what} must be (B, 3, H, W) images, got shape "
                             f"{tuple(images.shape)}")
        return images
    channels = _input_channels(adapter.model)
    if images.shape[1] != channels:
        if images.shape[1] == 1 and channels == 3:
            images = images.repeat(1, 3, 1, 1)
        else:
            raise InputError(f"{what} has {images.shape[1]} channels; the host's first layer "
                             f"takes {channels}")
    param = next(adapter.model.parameters(), None)
    if param is not None and param.device.type == "meta":
        raise InputError(f"the model's parameters are on the 'meta' device (not materialised); "
                         f"load its weights before explaining {what}")
    if param is not None and param.is_floating_point():
        images = images.to(device=param.device, dtype=param.dtype)
    size = (int(images.shape[-2]), int(images.shape[-1]))
    expected = adapter.input_size()
    if expected is not None and size != tuple(expected):
        raise InputError(f"{what}: images of {size[0]}x{size[1]}; the host takes "
                         f"{expected[0]}x{expected[1]} (its position embeddings are fixed to "
                         "that size): resize them")
    try:
        grid = adapter.grid_size(size)
    except Exception as exc:
        raise InputError(f"{what}: images of {size[0]}x{size[1]} are too small or of a shape "
                         f"the host cannot take ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None
    if min(grid) < 1:
        raise InputError(f"{what}: images of {size[0]}x{size[1]} give a {grid[0]}x{grid[1]} "
                         f"grid on the host's spatial layer; they must be at least "
                         f"{adapter.patch_size(size)[0]}x{adapter.patch_size(size)[1]} pixels")
    return images


def _input_channels(model: nn.Module) -> int:
    """Channels the host's first convolution (or patch embedding) takes; 3 if none is found."""
    for module in model.modules():
        channels = getattr(module, "in_channels", None)
        if isinstance(module, nn.modules.conv._ConvNd) and isinstance(channels, int):
            return channels
    return 3


def _check_same_size(a: Tensor, b: Tensor, names: tuple[str, str]) -> None:
    if a.shape[-2:] != b.shape[-2:]:
        raise InputError(f"{names[0]} images are {tuple(a.shape[-2:])} and {names[1]} images "
                         f"{tuple(b.shape[-2:])}; resize both sides to one size")


def _check_embeddings(embeddings: Tensor, what: str) -> None:
    """Refuse inputs whose embedding is all zeros: every map of them would be zero too."""
    dead = (embeddings.abs().amax(dim=1) == 0).nonzero().flatten().tolist()
    if dead:
        raise InputError(f"{what} item(s) {dead[:5]} embed to an all-zero vector (blank or "
                         "degenerate input?); their similarity, and so their maps, carry "
                         "nothing to explain")


def _check_texts(texts: Sequence[str] | str) -> list[str]:
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
        raise InputError("texts must be a non-empty list of non-empty strings")
    return texts


def _pairs(scores: Tensor, pairs: Tensor | Sequence[tuple[int, int]] | None,
           top_k: int | None) -> Tensor:
    """(P, 2) pairs: explicit, top-k of each row of ``scores``, or all."""
    n_rows, n_cols = scores.shape
    if pairs is not None:
        raw = torch.as_tensor(pairs)
        if raw.is_floating_point() and not torch.equal(raw, raw.round()):
            raise InputError("pairs must hold integer indices, got fractional values")
        if raw.dtype == torch.bool or raw.is_complex():
            raise InputError(f"pairs must hold integer indices, got {raw.dtype}")
        if raw.numel() % 2:
            raise InputError(f"pairs must be (query, gallery) index pairs; got {raw.numel()} "
                             "numbers, an odd count")
        pairs = raw.to(torch.long).reshape(-1, 2)
        if pairs.numel() == 0:
            raise InputError("pairs is empty")
        if (pairs[:, 0] >= n_rows).any() or (pairs[:, 1] >= n_cols).any() or (pairs < 0).any():
            raise InputError(f"pairs index outside ({n_rows} queries, {n_cols} gallery items)")
        return pairs
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise InputError(f"top_k must be an integer, got {top_k!r}")
        if top_k < 1:
            raise InputError(f"top_k must be >= 1, got {top_k}")
        k = min(top_k, n_cols)
        cols = scores.topk(k, dim=1).indices
        rows = torch.arange(n_rows)[:, None].expand_as(cols)
        return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)
    rows, cols = torch.meshgrid(torch.arange(n_rows), torch.arange(n_cols), indexing="ij")
    return torch.stack([rows.reshape(-1), cols.reshape(-1)], dim=1)


def _eval_set(data: Any, transform: Any = None) -> Any:
    """A ReidEvalSet from a ReidEvalSet, a data set folder, or a (query, gallery) pair."""
    from .evaluation.protocol import ReidEvalSet

    if isinstance(data, (str, os.PathLike)):
        side = Path(data) / "synthpedes" / "annotations.json"
        return (ReidEvalSet.from_synthpedes(data, transform) if side.is_file()
                else ReidEvalSet.from_market(data, transform))
    if isinstance(data, tuple) and len(data) == 2:
        query, gallery = data
        return ReidEvalSet(query=query, query_pids=[d[1] for d in query.data],
                           query_camids=[d[2] for d in query.data], gallery=gallery,
                           gallery_pids=[d[1] for d in gallery.data],
                           gallery_camids=[d[2] for d in gallery.data])
    return data


class Explainer:
    """Explanations of a wrapped host model; see :func:`explainify`."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.guard = HostGuard(adapter.model)
        self._closed = False

    @property
    def model(self) -> nn.Module:
        return self.adapter.model

    def __enter__(self) -> Explainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Remove everything this explainer put on the host."""
        if not self._closed:
            self.adapter.close()
            self._closed = True

    def __repr__(self) -> str:
        return f"Explainer({self.adapter.describe()})"

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this explainer is closed; call explainify(model) again")

    # -- embeddings ---------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, images: Tensor, batch_size: int = 64) -> Tensor:
        """L2-normalised image embeddings, ``(B, D)``."""
        self._check_open()
        images = _check_images(images, "images", self.adapter)
        with self.guard:
            out = [self.adapter.embed_image(chunk) for chunk in images.split(batch_size)]
        return F.normalize(torch.cat(out).float(), dim=-1)

    @torch.no_grad()
    def embed_text(self, texts: Sequence[str] | str, batch_size: int = 64) -> Tensor:
        """L2-normalised text embeddings, ``(B, D)`` (CLIP-style hosts)."""
        self._check_open()
        tokens = self.adapter.tokenize(_check_texts(texts))
        with self.guard:
            out = [self.adapter.embed_text(chunk) for chunk in tokens.split(batch_size)]
        return F.normalize(torch.cat(out).float(), dim=-1)

    def similarity(self, query: Tensor, gallery: Tensor) -> Tensor:
        """Cosine similarity matrix ``(Bq, Bg)``."""
        return self.embed(query) @ self.embed(gallery).T

    # -- attribution --------------------------------------------------------------------------
    def _method(self, method: str, modality: str) -> tuple[Attribution, str]:
        entry = plugins.get("attributions", method)
        cls = entry.obj
        if cls.modality != modality:
            raise InputError(f"attribution {method!r} explains {cls.modality} inputs, "
                             f"not {modality} inputs")
        missing = set(cls.requires) - set(self.adapter.capabilities)
        if missing:
            raise AdapterError(f"attribution {method!r} needs {sorted(missing)}, which adapter "
                               f"{self.adapter.name!r} ({type(self.model).__name__}) lacks")
        try:
            return cls(self.adapter), entry.plugin
        except Exception as exc:
            raise PluginError(f"attribution {method!r} from plugin {entry.plugin!r} failed to "
                              f"initialise: {type(exc).__name__}: {exc}") from exc

    def attribute(self, inputs: Tensor, target: Target, method: str = "gradcam",
                  baselines: Any = None, internal_batch_size: int | None = None,
                  modality: str = "image", **options: Any) -> Tensor:
        """Run one attribution method on a batch; ``internal_batch_size`` rows per pass."""
        self._check_open()
        instance, plugin = self._method(method, modality)
        n = inputs.shape[0]
        step = internal_batch_size or n
        outputs = []
        with self.guard:
            for start in range(0, n, step):
                rows = slice(start, min(start + step, n))
                chunk_baselines = baselines[rows] if isinstance(baselines, Tensor) and \
                    baselines.dim() == inputs.dim() and baselines.shape[0] == n else baselines
                try:
                    result = instance.attribute(inputs[rows], target.select(rows),
                                                baselines=chunk_baselines, **options)
                except Exception as exc:
                    raise PluginError(f"attribution {method!r} from plugin {plugin!r} raised "
                                      f"{type(exc).__name__}: {exc}") from exc
                if not isinstance(result, Tensor) or result.shape[0] != rows.stop - rows.start:
                    raise PluginError(f"attribution {method!r} from plugin {plugin!r} returned "
                                      f"{type(result).__name__} "
                                      f"{tuple(getattr(result, 'shape', ()))}; expected one map "
                                      "per input row")
                outputs.append(result.detach().float().cpu())
        maps = torch.cat(outputs)
        if not torch.isfinite(maps).all():
            raise PluginError(f"attribution {method!r} from plugin {plugin!r} returned NaN/inf")
        return maps

    def _grounding(self, maps: Tensor, images: Tensor, scores: Tensor, method: str,
                   labels: list[str], references: Tensor) -> GroundingMap:
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return GroundingMap(maps=maps, scores=scores.detach().cpu(), method=method,
                            image_size=size, grid_size=self.adapter.grid_size(size),
                            images=images.detach().cpu(), labels=labels,
                            references=references.detach().cpu(),
                            pixel_mean=self.adapter.pixel_mean, pixel_std=self.adapter.pixel_std)

    def explain(self, query: Tensor, gallery: Tensor, method: str = "gradcam", *,
                pairs: Tensor | Sequence[tuple[int, int]] | None = None,
                top_k: int | None = None, side: str = "both",
                internal_batch_size: int | None = None, baselines: Any = None,
                **options: Any) -> PairExplanation:
        """Explain the similarity of query/gallery pairs on both images, in one batch.

        Pairs are ``pairs`` if given, else each query's ``top_k`` gallery matches, else all.
        The score explained is the cosine of the two embeddings; on the query image the gallery
        embedding is the fixed reference and vice versa. All pairs and both sides go through the
        host as one batch (``internal_batch_size`` splits it).
        """
        if side not in SIDES:
            raise InputError(f"side must be one of {SIDES}, got {side!r}")
        query = _check_images(query, "query", self.adapter)
        gallery = _check_images(gallery, "gallery", self.adapter)
        _check_same_size(query, gallery, ("query", "gallery"))
        q_emb, g_emb = self.embed(query), self.embed(gallery)
        _check_embeddings(q_emb, "query")
        _check_embeddings(g_emb, "gallery")
        scores = q_emb @ g_emb.T
        pairs = _pairs(scores, pairs, top_k)
        qi, gi = pairs[:, 0], pairs[:, 1]
        pair_scores = scores[qi, gi]
        parts: list[tuple[str, Tensor, Tensor]] = []
        if side in ("both", "query"):
            parts.append(("query", query[qi], g_emb[gi]))
        if side in ("both", "gallery"):
            parts.append(("gallery", gallery[gi], q_emb[qi]))
        inputs = torch.cat([p[1] for p in parts])
        references = torch.cat([p[2] for p in parts])
        maps = self.attribute(inputs, CosineSimilarity(references), method=method,
                              baselines=baselines, internal_batch_size=internal_batch_size,
                              **options)
        labels = [f"q{int(q)}-g{int(g)}" for q, g in pairs]
        result: dict[str, GroundingMap | None] = {"query": None, "gallery": None}
        for k, (name, images, refs) in enumerate(parts):
            rows = slice(k * len(pairs), (k + 1) * len(pairs))
            result[name] = self._grounding(maps[rows], images, pair_scores, method, labels, refs)
        return PairExplanation(pairs=pairs, scores=pair_scores.cpu(), method=method,
                               query=result["query"], gallery=result["gallery"])

    def explain_text(self, texts: Sequence[str] | str, images: Tensor,
                     method: str = "gradcam", text_method: str | None = "token_ig", *,
                     pairs: Tensor | Sequence[tuple[int, int]] | None = None,
                     top_k: int | None = None, internal_batch_size: int | None = None,
                     **options: Any) -> TextImageExplanation:
        """Explain caption-image similarity: which patches support each caption (``method``)
        and which words the match rests on (``text_method``; None to skip)."""
        texts = _check_texts(texts)
        images = _check_images(images, "images", self.adapter)
        tokens = self.adapter.tokenize(texts)
        t_emb, i_emb = self.embed_text(texts), self.embed(images)
        scores = t_emb @ i_emb.T
        pairs = _pairs(scores, pairs, top_k)
        ti, ii = pairs[:, 0], pairs[:, 1]
        pair_scores = scores[ti, ii]
        labels = [f"t{int(t)}-i{int(i)}" for t, i in pairs]
        image_map = None
        if method is not None:
            maps = self.attribute(images[ii], CosineSimilarity(t_emb[ti]), method=method,
                                  internal_batch_size=internal_batch_size, **options)
            image_map = self._grounding(maps, images[ii], pair_scores, method, labels,
                                        t_emb[ti])
        text_rel = None
        if text_method is not None:
            pair_tokens = tokens[ti]
            relevance = self.attribute(pair_tokens, CosineSimilarity(i_emb[ii]),
                                       method=text_method, modality="text",
                                       internal_batch_size=internal_batch_size)
            special = self.adapter.special_tokens(pair_tokens).cpu()
            text_rel = TokenRelevance(relevance=relevance.masked_fill(special, 0.0),
                                      tokens=self.adapter.decode_tokens(pair_tokens),
                                      scores=pair_scores.cpu(), method=text_method,
                                      special=special)
        return TextImageExplanation(pairs=pairs, scores=pair_scores.cpu(), method=method or "",
                                    image=image_map, text=text_rel, texts=texts)

    def ground(self, images: Tensor, captions: Sequence[str] | str, method: str = "similarity",
               **options: Any):
        """One map per part phrase of each caption over its image (``images[i]`` with
        ``captions[i]``). ``method``: ``"ppim"`` (pass ``ppim=`` the trained PPIM),
        ``"similarity"`` or an image attribution; see :mod:`reid_explain.grounding`."""
        from .grounding import ground

        self._check_open()
        return ground(self, images, captions, method=method, **options)

    # -- metrics ------------------------------------------------------------------------------
    def evaluate(self, data: Any, method: str = "gradcam",
                 metrics: Sequence[str] = ("counterfactual_masking",), **options: Any):
        """Explain each query of ``data`` against its true match and score the maps.

        ``data`` is a :class:`~reid_explain.evaluation.protocol.ReidEvalSet`, the root of a
        Market-1501-style folder (a SynthPedes export brings its part masks), or a
        ``(query_dataset, gallery_dataset)`` pair of datasets with torchreid-style ``.data``
        lists ``(path, pid, camid, ...)`` (e.g. :class:`~reid_explain.data.ImageReidDataset`
        or torchreid's own). Returns an
        :class:`~reid_explain.evaluation.protocol.EvaluationResult` (``.table``, ``.summary``,
        ``.save(dir)``). Options: see :func:`reid_explain.evaluation.protocol.evaluate`.
        """
        from .evaluation.protocol import evaluate

        self._check_open()
        data = _eval_set(data, options.pop("transform", None))
        return evaluate(self, data, method=method, metrics=metrics, **options)

    def report(self, data: Any, out: str | os.PathLike, methods: Sequence[str] | None = None,
               n_queries: int = 100, attributes: Any = None, **options: Any) -> Path:
        """Write the HTML report of this (image ReID) host on ``data`` to ``out``: retrieval
        with match marks, maps of every method, faithfulness beside random maps, the
        model-randomisation check and, given the identities' ``attributes`` table, the
        attribute study. ``data`` as for :meth:`evaluate`; see :mod:`reid_explain.report`."""
        from .report import image_report

        self._check_open()
        data = _eval_set(data, options.pop("transform", None))
        return image_report(self, data, out, methods=methods, n_queries=n_queries,
                            attributes=attributes, **options)

    def score(self, explanation: PairExplanation, metrics: Sequence[str] | str,
              **options: Any) -> dict[str, Tensor]:
        """Per-pair values of each metric, keyed ``"metric"`` or ``"metric.value"``."""
        self._check_open()
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
        results: dict[str, Tensor] = {}
        context = MetricContext(explainer=self, explanation=explanation)
        for name in metrics:
            entry = plugins.get("metrics", name)
            with self.guard:
                try:
                    values = entry.obj(**options.get(name, {})).compute(context)
                except Exception as exc:
                    raise PluginError(f"metric {name!r} from plugin {entry.plugin!r} raised "
                                      f"{type(exc).__name__}: {exc}") from exc
            for key, value in values.items():
                results[name if key == name else f"{name}.{key}"] = value
        return results
