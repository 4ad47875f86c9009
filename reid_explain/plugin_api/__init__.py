"""What a plugin author implements or receives: the plugin contract beside ``hookspecs.py``.

* bases to subclass: :class:`Adapter` (``adapter``), :class:`Attribution` (``attribution``),
  :class:`Masker` (``masker``), :class:`Metric` (``metric``), :class:`TrainingLoss` and
  :class:`BackboneModification` (``training_hooks``), :class:`PhraseExtractor` (``phrases``)
* what they are handed: targets (``targets``), maps (``maps``), the explainer's protocol
  (``interfaces``) and the guard that undoes a plugin's hooks (``host_guard``)
* the registry: :func:`register`, :func:`unregister`, :func:`list_plugins` (``manager``)

Lower layers only: this package imports ``errors``, ``hookspecs`` and ``_util``, never the
façade, the engine or any subsystem (``tests/test_import_graph.py``).
"""

from __future__ import annotations

from .._util.lazy import lazy_exports

#: public name -> submodule, imported on first use
_EXPORTS: dict[str, str] = {
    "Adapter": "adapter",
    "Attribution": "attribution",
    "Masker": "masker",
    "Metric": "metric",
    "MetricContext": "metric",
    "BackboneModification": "training_hooks",
    "TrainingLoss": "training_hooks",
    "PartPhrase": "phrases",
    "PhraseExtractor": "phrases",
    "extract_phrases": "phrases",
    "CentredCosine": "targets",
    "CosineSimilarity": "targets",
    "Target": "targets",
    "GroundingMap": "maps",
    "PairExplanation": "maps",
    "TextImageExplanation": "maps",
    "TokenRelevance": "maps",
    "ExplainerLike": "interfaces",
    "HostGuard": "host_guard",
    "list_plugins": "manager",
    "register": "manager",
    "unregister": "manager",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())

__all__ = sorted(_EXPORTS)
