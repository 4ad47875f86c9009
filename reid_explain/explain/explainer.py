"""``explainify(model)`` and the Explainer it returns: the façade of reid-explain.

The Explainer is the one object a user holds: it picks an adapter for the host, runs
attribution plugins on batches of (query, gallery) or (text, image) pairs, scores explanations
with metric plugins, and applies training-time modifications (``modify``). Every call runs
inside a :class:`HostGuard`, so the host leaves each call (and ``close()``) exactly as it came
in. Dependencies point one way: this module imports the parts (engine, inputs, grounding,
evaluation, report, plugins); no part imports it (see docs/architecture.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..core.adapter_choice import adapter_listing, build_adapter, choose_adapter
from ..core.engine import Engine
from ..core.inputs import (
    check_embeddings,
    check_images,
    check_same_size,
    check_texts,
    input_channels,
    pair_centre,
    select_pairs,
)
from ..errors import InputError, PluginError, ReidExplainError
from ..plugin_api import manager as plugins
from ..plugin_api.adapter import Adapter
from ..plugin_api.maps import GroundingMap, PairExplanation, TextImageExplanation, TokenRelevance
from ..plugin_api.metric import MetricContext
from ..plugin_api.targets import CosineSimilarity, RecordingCosine, similarity_target
from ..plugin_api.training_hooks import BackboneModification, build_modification

__all__ = ["SIDES", "Explainer", "choose_adapter", "explainify"]

SIDES = ("both", "query", "gallery")

# Former private names, kept importable from here for code written against them.
_adapter_listing = adapter_listing
_check_images = check_images
_check_texts = check_texts
_check_same_size = check_same_size
_check_embeddings = check_embeddings
_input_channels = input_channels
_pairs = select_pairs


def explainify(model: nn.Module, layer: str | nn.Module | None = None,
               adapter: str | type[Adapter] | None = None, ppim: Any = None,
               **adapter_options: Any) -> Explainer:
    """Wrap ``model`` for explanation; use as a context manager or call ``close()``.

    ``ppim``: the PPIM the model was trained with (a training session's ``losses["ppim"]``,
    or the session itself): its head's phrase maps are then the method ``"ppim"`` of
    :meth:`Explainer.ground` and of the report's phrase grounding."""
    explainer = Explainer(build_adapter(model, layer=layer, adapter=adapter, **adapter_options))
    if ppim is not None:
        losses = getattr(ppim, "losses", None)
        if isinstance(losses, dict):
            if "ppim" not in losses:
                explainer.close()
                raise InputError(f"explainify(ppim=...): the session trained "
                                 f"{sorted(losses)}, not 'ppim'")
            ppim = losses["ppim"]
        explainer.ppim = ppim
    return explainer


def _eval_set(data: Any, transform: Any = None) -> Any:
    """A ReidEvalSet from a ReidEvalSet, a data set folder, or a (query, gallery) pair."""
    from ..evaluation.protocol import ReidEvalSet

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


class Explainer(Engine):
    """Explanations of a wrapped host model; see :func:`explainify`.

    Embedding and attribution come from :class:`~reid_explain.core.engine.Engine`; this class adds
    pair and caption explanations, grounding, evaluation, the report, metrics, and the
    backbone modifications it applied (removed again, last first, on ``close()``).
    """

    def __init__(self, adapter: Adapter) -> None:
        super().__init__(adapter)
        self._modifications: list[tuple[str, BackboneModification]] = []
        #: the trained PPIM whose head gives the ``"ppim"`` phrase maps (see explainify)
        self.ppim: Any = None

    def __enter__(self) -> Explainer:
        return self

    def __repr__(self) -> str:
        on = ", ".join(self.modifications)
        return (f"<Explainer {self.adapter!r}{' with ' + on if on else ''}"
                f"{' (closed)' if self._closed else ''}>")

    def close(self) -> None:
        """Remove every modification (last applied first), then the adapter's hooks."""
        if self._closed:
            return
        try:
            while self._modifications:
                self._modifications.pop()[1].remove()
        finally:
            super().close()

    # -- training-time modifications ------------------------------------------------------------
    @property
    def modifications(self) -> dict[str, BackboneModification]:
        """The modifications applied through :meth:`modify` and still on, by name."""
        return {name: m for name, m in self._modifications if m.applied}

    def modify(self, name: str, **options: Any) -> BackboneModification:
        """Apply the registered backbone modification ``name`` (e.g. ``"lora_moe"``) to the host.

        Returns the applied modification (for ``lora_moe``: ``route(codes)``,
        ``route(gates=)``, ``bypass()``, ``ablate(group)``, ``parameters()``,
        ``save_pretrained(dir)``, ``remove()``); it stays on across ``embed`` / ``explain``
        calls until its ``remove()``, the end of a ``with`` block on it, or this explainer's
        ``close()``, each of which leaves the host exactly as it was.
        """
        self._check_open()
        modification = build_modification(self.adapter, name, **options)
        try:
            modification.apply()
        except ReidExplainError:
            raise
        except Exception as exc:
            raise PluginError(f"backbone modification {name!r} could not be applied to "
                              f"{type(self.model).__name__}: {type(exc).__name__}: {exc}"
                              ) from exc
        self._modifications.append((name, modification))
        return modification

    # -- explanations ---------------------------------------------------------------------------
    def _grounding(self, maps: Tensor, images: Tensor, index: Tensor, scores: Tensor,
                   method: str, labels: list[str], references: Tensor) -> GroundingMap:
        """Row ``i`` explains ``images[index[i]]``; each image is stored once (the caller's
        tensor itself, not a copy, when every image is explained)."""
        size = (int(images.shape[-2]), int(images.shape[-1]))
        distinct, inverse = torch.unique(index.cpu(), return_inverse=True)
        stored = images if len(distinct) == len(images) else images[distinct.to(images.device)]
        return GroundingMap(maps=maps, scores=scores.detach().cpu(), method=method,
                            image_size=size, grid_size=self.adapter.grid_size(size),
                            images=stored.detach().cpu(), image_index=inverse, labels=labels,
                            references=references.detach().cpu(),
                            pixel_mean=self.adapter.pixel_mean, pixel_std=self.adapter.pixel_std)

    def explain(self, query: Tensor, gallery: Tensor, method: str = "gradcam", *,
                pairs: Tensor | Sequence[tuple[int, int]] | None = None,
                top_k: int | None = None, side: str = "both",
                internal_batch_size: int | None = None, baselines: Any = None,
                centre: Tensor | str | None = None, **options: Any) -> PairExplanation:
        """Explain the similarity of query/gallery pairs on both images, in one batch.

        Pairs are ``pairs`` if given, else each query's ``top_k`` gallery matches, else all.
        The score explained is the cosine of the two embeddings; on the query image the gallery
        embedding is the fixed reference and vice versa. All pairs and both sides go through the
        host as one batch (``internal_batch_size`` splits it).

        ``centre``: ``"gallery"`` (the mean normalised embedding of ``gallery``, which then
        needs two images or more) or a ``(D,)`` embedding explains the cosine minus each image's
        similarity to that centre instead (:class:`~reid_explain.plugin_api.targets.CentredCosine`,
        what ``evaluate`` explains by default): what this pair shares beyond what every
        gallery image shares.
        """
        if side not in SIDES:
            raise InputError(f"side must be one of {SIDES}, got {side!r}")
        query = check_images(query, "query", self.adapter)
        gallery = check_images(gallery, "gallery", self.adapter)
        check_same_size(query, gallery, ("query", "gallery"))
        q_emb = self.embed(query, batch_size=internal_batch_size)
        check_embeddings(q_emb, "query")
        every_pair = pairs is None and (top_k is None or top_k >= len(gallery))
        if every_pair and side == "both" and baselines is None and centre is None and \
                plugins.get("attributions", method).obj.shares_images:
            return self._explain_every_pair(query, gallery, q_emb, method, top_k,
                                            internal_batch_size, options)
        g_emb = self.embed(gallery, batch_size=internal_batch_size)
        check_embeddings(g_emb, "gallery")
        centre = pair_centre(centre, g_emb)
        scores = q_emb @ g_emb.T
        pairs = select_pairs(scores, pairs, top_k)
        qi, gi = pairs[:, 0], pairs[:, 1]
        pair_scores = scores[qi, gi]
        parts: list[tuple[str, Tensor, Tensor, Tensor]] = []  # side, images, image rows, refs
        if side in ("both", "query"):
            parts.append(("query", query, qi, g_emb[gi]))
        if side in ("both", "gallery"):
            parts.append(("gallery", gallery, gi, q_emb[qi]))
        # each image once, with the row -> image index: a query explained against k gallery
        # images is one input, which methods that can share its forward run once
        distinct = [torch.unique(p[2], return_inverse=True) for p in parts]
        offsets = torch.tensor([0] + [len(d[0]) for d in distinct]).cumsum(0)
        inputs = torch.cat([p[1][d[0].to(p[1].device)] for p, d in
                            zip(parts, distinct, strict=True)])
        image_index = torch.cat([d[1] + offsets[k] for k, d in enumerate(distinct)])
        references = torch.cat([p[3] for p in parts])
        maps = self.attribute(inputs, similarity_target(references, centre), method=method,
                              baselines=baselines, internal_batch_size=internal_batch_size,
                              image_index=image_index, **options)
        return self._pair_explanation(pairs, pair_scores, method, parts, maps)

    def _explain_every_pair(self, query: Tensor, gallery: Tensor, q_emb: Tensor, method: str,
                            top_k: int | None, internal_batch_size: int | None,
                            options: dict[str, Any]) -> PairExplanation:
        """Every (query, gallery) pair on both sides with a method that runs the host on the
        unchanged images: the gallery side's explanation pass is also the gallery's embedding
        pass (its target keeps the embeddings it scores), so each image goes through the host
        once. Rows are then ordered by score, as ``top_k`` orders them."""
        n_q, n_g = len(query), len(gallery)
        every = select_pairs(torch.zeros(n_q, n_g), None, None)  # row q * n_g + g
        recorder = RecordingCosine(q_emb[every[:, 0]])
        # every gallery image is explained: the caller's tensor is the input, not a copy
        g_maps = self.attribute(gallery, recorder, method=method,
                                internal_batch_size=internal_batch_size, image_index=every[:, 1],
                                **options)
        g_emb = recorder.store[:n_g].to(q_emb.device)  # rows 0..n_g-1: query 0, gallery g
        if torch.isnan(g_emb).any():  # the method scored only altered copies: embed them
            g_emb = self.embed(gallery, batch_size=internal_batch_size)
        check_embeddings(g_emb, "gallery")
        scores = q_emb @ g_emb.T
        pairs = select_pairs(scores, None, top_k)
        qi, gi = pairs[:, 0], pairs[:, 1]
        g_maps = g_maps[qi * n_g + gi]
        q_distinct, q_inverse = torch.unique(qi, return_inverse=True)
        q_maps = self.attribute(query[q_distinct.to(query.device)],
                                CosineSimilarity(g_emb[gi]), method=method,
                                internal_batch_size=internal_batch_size, image_index=q_inverse,
                                **options)
        parts = [("query", query, qi, g_emb[gi]), ("gallery", gallery, gi, q_emb[qi])]
        return self._pair_explanation(pairs, scores[qi, gi], method, parts,
                                      torch.cat([q_maps, g_maps]))

    def _pair_explanation(self, pairs: Tensor, pair_scores: Tensor, method: str,
                          parts: list[tuple[str, Tensor, Tensor, Tensor]],
                          maps: Tensor) -> PairExplanation:
        labels = [f"q{int(q)}-g{int(g)}" for q, g in pairs]
        result: dict[str, GroundingMap | None] = {"query": None, "gallery": None}
        for k, (name, images, index, refs) in enumerate(parts):
            rows = slice(k * len(pairs), (k + 1) * len(pairs))
            result[name] = self._grounding(maps[rows], images, index,
                                           pair_scores, method, labels, refs)
        return PairExplanation(pairs=pairs, scores=pair_scores.cpu(), method=method,
                               query=result["query"], gallery=result["gallery"])

    def explain_text(self, texts: Sequence[str] | str, images: Tensor,
                     method: str = "gradcam", text_method: str | None = "token_ig", *,
                     pairs: Tensor | Sequence[tuple[int, int]] | None = None,
                     top_k: int | None = None, internal_batch_size: int | None = None,
                     text_options: dict[str, Any] | None = None,
                     **options: Any) -> TextImageExplanation:
        """Explain caption-image similarity: which patches support each caption (``method``,
        with ``options``) and which words the match rests on (``text_method``, with
        ``text_options``, e.g. ``{"n_steps": 8}`` for token_ig; None to skip)."""
        texts = check_texts(texts)
        images = check_images(images, "images", self.adapter)
        tokens = self.adapter.tokenize(texts)
        t_emb, i_emb = self.embed_text(texts), self.embed(images)
        scores = t_emb @ i_emb.T
        pairs = select_pairs(scores, pairs, top_k)
        ti, ii = pairs[:, 0], pairs[:, 1]
        pair_scores = scores[ti, ii]
        labels = [f"t{int(t)}-i{int(i)}" for t, i in pairs]
        image_map = None
        if method is not None:
            maps = self.attribute(images[ii], CosineSimilarity(t_emb[ti]), method=method,
                                  internal_batch_size=internal_batch_size, **options)
            image_map = self._grounding(maps, images, ii, pair_scores, method, labels,
                                        t_emb[ti])
        text_rel = None
        if text_method is not None:
            pair_tokens = tokens[ti]
            relevance = self.attribute(pair_tokens, CosineSimilarity(i_emb[ii]),
                                       method=text_method, modality="text",
                                       internal_batch_size=internal_batch_size,
                                       **(text_options or {}))
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
        ``captions[i]``). ``method``: ``"ppim"`` (the head of ``explainify(..., ppim=)``, or
        pass ``ppim=`` here),
        ``"similarity"`` or an image attribution; see :mod:`reid_explain.explain.grounding`."""
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
        from ..evaluation.protocol import evaluate

        self._check_open()
        data = _eval_set(data, options.pop("transform", None))
        return evaluate(self, data, method=method, metrics=metrics, **options)

    def choose_sharpen(self, validation: Any, method: str = "gradcam", **options: Any):
        """The ``sharpen`` power of ``method`` with the best person energy on ``validation``
        (identities never scored, with part masks; ``data`` forms as for :meth:`evaluate`).
        Returns a :class:`~reid_explain.evaluation.sharpening.SharpenChoice`; pass its
        ``power`` as ``method_options={"sharpen": power}`` when scoring the test split."""
        from ..evaluation.sharpening import choose_sharpen

        self._check_open()
        validation = _eval_set(validation, options.pop("transform", None))
        return choose_sharpen(self, validation, method, **options)

    def report(self, data: Any, out: str | os.PathLike, methods: Sequence[str] | None = None,
               n_queries: int = 100, attributes: Any = None, **options: Any) -> Path:
        """Write the HTML report of this (image ReID) host on ``data`` to ``out``: retrieval
        with match marks, maps of every method, faithfulness beside random maps, the
        model-randomisation check and, given the identities' ``attributes`` table, the
        attribute study. ``data`` as for :meth:`evaluate`; see :mod:`reid_explain.report`."""
        from ..report import image_report

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
