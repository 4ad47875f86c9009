"""The Metric base class: a score of how good an explanation is.

A metric receives the explainer (to run the host, e.g. on masked images) and a
:class:`~reid_explain.maps.PairExplanation`, and returns named per-pair values. Metrics are
plugins: ``explainer.score(explanation, metrics=["name"])``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from torch import Tensor

if TYPE_CHECKING:
    from .explainer import Explainer
    from .maps import PairExplanation


class Metric:
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: True if a larger value means a better (more faithful, better grounded) explanation
    higher_is_better: ClassVar[bool | None] = None

    def __init__(self, **options: Any) -> None:
        self.options = options

    def compute(self, explainer: Explainer, explanation: PairExplanation) -> dict[str, Tensor]:
        """Named ``(P,)`` tensors of per-pair values."""
        raise NotImplementedError
