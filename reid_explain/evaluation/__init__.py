"""Evaluation: retrieval metrics, the explanation-scoring protocol, bootstrap, sanity checks.

Metric plugins (faithfulness by perturbation, counterfactual masking, grounding) live in
``reid_explain.plugins.metrics`` and are used by name; see docs/metrics.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._util.lazy import lazy_exports

if TYPE_CHECKING:
    from .bootstrap import BootstrapCI, bootstrap_ci
    from .protocol import EvaluationResult, ReidEvalSet, evaluate, random_maps, true_matches
    from .retrieval import from_distmat, from_similarity, image_reid_metrics, text_image_metrics
    from .sanity import model_randomization_check, random_map_baseline
    from .word_reference import word_faithfulness

#: public name -> submodule; imported on first use, so that importing one light submodule
#: (a schema, a score) does not import pandas, scipy and PIL through its siblings
_EXPORTS: dict[str, str] = {
    "BootstrapCI": "bootstrap",
    "bootstrap_ci": "bootstrap",
    "EvaluationResult": "protocol",
    "ReidEvalSet": "protocol",
    "evaluate": "protocol",
    "random_maps": "protocol",
    "true_matches": "protocol",
    "from_distmat": "retrieval",
    "from_similarity": "retrieval",
    "image_reid_metrics": "retrieval",
    "text_image_metrics": "retrieval",
    "model_randomization_check": "sanity",
    "random_map_baseline": "sanity",
    "word_faithfulness": "word_reference",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())


__all__ = [
    "BootstrapCI", "EvaluationResult", "ReidEvalSet", "bootstrap_ci", "evaluate",
    "from_distmat", "from_similarity", "image_reid_metrics", "model_randomization_check",
    "random_map_baseline", "random_maps", "text_image_metrics", "true_matches",
    "word_faithfulness",
]
