"""Evaluation: retrieval metrics, the explanation-scoring protocol, bootstrap, sanity checks.

Metric plugins (faithfulness by perturbation, counterfactual masking, grounding) live in
``reid_explain.plugins.metrics`` and are used by name; see docs/metrics.md.
"""

from .bootstrap import BootstrapCI, bootstrap_ci
from .protocol import EvaluationResult, ReidEvalSet, evaluate, random_maps, true_matches
from .retrieval import from_distmat, from_similarity, image_reid_metrics, text_image_metrics
from .sanity import model_randomization_check, random_map_baseline

__all__ = [
    "BootstrapCI", "EvaluationResult", "ReidEvalSet", "bootstrap_ci", "evaluate",
    "from_distmat", "from_similarity", "image_reid_metrics", "model_randomization_check",
    "random_map_baseline", "random_maps", "text_image_metrics", "true_matches",
]
