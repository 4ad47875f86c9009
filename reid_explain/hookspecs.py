"""The plugin contract of reid-explain.

Every extension point is a pluggy hook that receives a ``register`` callback, as in ``llm``: a
plugin implements the hook with ``@reid_explain.hookimpl`` and calls ``register(...)`` once per
thing it provides. The core never names a plugin; the built-in adapters, attributions and metrics
are registered through these same hooks (via the ``reid_explain`` entry-point group), exactly as a
third party's would be.

A third party registers a plugin object (a module or an instance) with
``reid_explain.register(obj)`` at run time, or ships it under the entry-point group
``reid_explain`` in its ``pyproject.toml``::

    [project.entry-points.reid_explain]
    my_plugin = "my_package.reid_plugin"

Names must be unique per kind: two plugins registering the same attribution name is an error that
names both plugins.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "reid_explain"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_adapters(register: Callable[[type], None]) -> None:
    """Register host adapters: ``register(AdapterSubclass)``.

    An adapter is the uniform face of one family of host models (torchreid CNNs, open_clip CLIP,
    timm ViTs, ...). ``explainify(model)`` asks every registered adapter class, highest
    ``priority`` first, whether it ``matches(model)`` and uses the first that does;
    ``explainify(model, adapter="name")`` picks one by its ``name``. See
    :class:`reid_explain.plugin_api.adapter.Adapter` for what an adapter must expose.
    """


@hookspec
def register_attributions(register: Callable[[type], None]) -> None:
    """Register attribution methods: ``register(AttributionSubclass)``.

    An attribution explains a score (a cosine similarity between embeddings, given as a target
    callable) by a map over the image's patch grid, or over the text tokens for
    ``modality = "text"``. It is used by its ``name``:
    ``explainer.explain(query, gallery, method="gradcam")``. See
    :class:`reid_explain.plugin_api.attribution.Attribution`.
    """


@hookspec
def register_metrics(register: Callable[[type], None]) -> None:
    """Register metrics that score explanations: ``register(MetricSubclass)``.

    A metric receives the explainer and an explanation and returns per-pair values (for
    example the similarity drop when the top explanatory patches are masked). It is used by its
    ``name``: ``explainer.score(explanation, metrics=["name"])``. See
    :class:`reid_explain.plugin_api.metric.Metric`.
    """


@hookspec
def register_maskers(register: Callable[[type], None]) -> None:
    """Register maskers for perturbation metrics: ``register(MaskerSubclass)``.

    A masker removes image regions given as boolean masks on the patch grid: by filling them
    with the data set mean, blurring, adding noise, or (ViT hosts) dropping their tokens. It is
    chosen by ``name`` in perturbation metrics (``masker="blur"``). See
    :class:`reid_explain.plugin_api.masker.Masker`.
    """


@hookspec
def register_phrase_extractors(register: Callable[[type], None]) -> None:
    """Register part-phrase extractors: ``register(PhraseExtractorSubclass)``.

    A phrase extractor finds, in a free-text caption, the phrases that describe a body part or
    carried object with their modifiers ("a light-blue short-sleeved T-shirt") and their
    character spans. PPIM supervision and ``explainer.ground(image, caption)`` use the one named
    by ``phrase_extractor="name"``. See :class:`reid_explain.plugin_api.phrases.PhraseExtractor`.
    """


@hookspec
def register_training_losses(register: Callable[[type], None]) -> None:
    """Register training-time auxiliary losses: ``register(TrainingLossSubclass)``.

    A training loss attaches to a host through its adapter (for example to read the patch tokens
    or the self-attention of the last blocks), and returns a scalar loss for a batch that the
    user adds to their own objective (PPIM phrase supervision, attention constraints). See
    :class:`reid_explain.plugin_api.training_hooks.TrainingLoss`.
    """


@hookspec
def register_backbone_modifications(register: Callable[[type], None]) -> None:
    """Register backbone modifications: ``register(BackboneModificationSubclass)``.

    A modification injects modules into the blocks an adapter exposes (for example residual
    LoRA mixture-of-experts in the last transformer blocks) and can remove them again, leaving the
    host bit-identical. See :class:`reid_explain.plugin_api.training_hooks.BackboneModification`.
    """
