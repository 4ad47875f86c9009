"""reid-explain: make person re-identification models explain themselves.

    from reid_explain import explainify
    with explainify(model) as exp:
        result = exp.explain(query, gallery, method="gradcam", top_k=5)
        moe = exp.modify("lora_moe", schema="market1501")   # training-time modification

    session = reid_explain.attach(model, losses=["ppim"])   # auxiliary losses for a loop
"""

from __future__ import annotations

from ._util.memory import keep_freed_memory
from ._util.moved import install as _install_moved_paths
from .errors import (
    AdapterError,
    DataFormatError,
    InputError,
    PluginConflictError,
    PluginError,
    ReidExplainError,
    UnknownPluginError,
)
from .explain.explainer import Explainer, explainify
from .hookspecs import hookimpl, hookspec
from .plugin_api.adapter import Adapter
from .plugin_api.attribution import Attribution
from .plugin_api.manager import list_plugins, register, unregister
from .plugin_api.maps import GroundingMap, PairExplanation, TextImageExplanation, TokenRelevance
from .plugin_api.masker import Masker
from .plugin_api.metric import Metric, MetricContext
from .plugin_api.phrases import PartPhrase, PhraseExtractor, extract_phrases
from .plugin_api.targets import CentredCosine, CosineSimilarity, Target
from .plugin_api.training_hooks import BackboneModification, TrainingLoss
from .training.session import TrainingSession, attach, auxiliary_losses

_install_moved_paths()  # the paths before issue 29's layout keep working, with a warning

__version__ = "0.1.0"

__all__ = [
    "Adapter", "AdapterError", "Attribution", "CentredCosine", "CosineSimilarity",
    "DataFormatError", "Explainer", "GroundingMap", "InputError", "Masker", "Metric",
    "MetricContext", "PairExplanation", "PartPhrase", "PhraseExtractor", "extract_phrases",
    "PluginConflictError", "PluginError", "ReidExplainError", "Target", "TextImageExplanation",
    "TokenRelevance", "UnknownPluginError", "explainify", "hookimpl", "hookspec",
    "list_plugins", "register", "unregister", "attach", "auxiliary_losses", "TrainingSession",
    "BackboneModification", "TrainingLoss", "keep_freed_memory",
]
