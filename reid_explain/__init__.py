"""reid-explain: make person re-identification models explain themselves.

    from reid_explain import explainify
    with explainify(model) as exp:
        result = exp.explain(query, gallery, method="gradcam", top_k=5)
        moe = exp.modify("lora_moe", schema="market1501")   # training-time modification

    session = reid_explain.attach(model, losses=["ppim"])   # auxiliary losses for a loop
"""

from __future__ import annotations

from ._memory import keep_freed_memory
from .adapter import Adapter
from .attribution import Attribution
from .errors import (
    AdapterError,
    DataFormatError,
    InputError,
    PluginConflictError,
    PluginError,
    ReidExplainError,
    UnknownPluginError,
)
from .explainer import Explainer, explainify
from .hookspecs import hookimpl, hookspec
from .maps import GroundingMap, PairExplanation, TextImageExplanation, TokenRelevance
from .masker import Masker
from .metric import Metric, MetricContext
from .phrases import PartPhrase, PhraseExtractor, extract_phrases
from .plugin_manager import list_plugins, register, unregister
from .targets import CosineSimilarity, Target
from .training.session import TrainingSession, attach, auxiliary_losses
from .training_hooks import BackboneModification, TrainingLoss

__version__ = "0.1.0"

__all__ = [
    "Adapter", "AdapterError", "Attribution", "CosineSimilarity", "DataFormatError",
    "Explainer", "GroundingMap", "InputError", "Masker", "Metric", "MetricContext",
    "PairExplanation", "PartPhrase", "PhraseExtractor", "extract_phrases",
    "PluginConflictError", "PluginError", "ReidExplainError", "Target", "TextImageExplanation",
    "TokenRelevance", "UnknownPluginError", "explainify", "hookimpl", "hookspec",
    "list_plugins", "register", "unregister", "attach", "auxiliary_losses", "TrainingSession",
    "BackboneModification", "TrainingLoss", "keep_freed_memory",
]
