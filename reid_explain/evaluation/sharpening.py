"""A method's ``sharpen`` power, chosen on validation pairs the way the reference's power is.

The image-blind reference is a location prior raised to the power with the best person energy
on images that are not scored (:mod:`.references`). Person energy rewards concentrated mass,
so a method's maps deserve the same treatment: a power ``p`` applied to the positive part of
every map (``explain(..., sharpen=p)``) keeps their order, so pointing, IoU and the
masking figures are unchanged, and only energy moves. :func:`choose_sharpen` picks ``p`` on
validation identities (queries against their true matches), never on the scored ones, and the
sharpened energy is then its own labelled figure beside the method as produced.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..errors import InputError
from ..plugin_api.interfaces import ExplainerLike
from ..plugin_api.maps import sharpen_maps
from .grounding_scores import energy_pointing_game
from .protocol import ImageSource, ReidEvalSet, check_score, score_centre, true_matches

#: powers tried (1: the maps as produced)
SHARPEN_POWERS: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0)


@dataclass(frozen=True)
class SharpenChoice:
    """The power with the best mean person energy on validation pairs, and every candidate's."""

    method: str
    power: float
    #: power -> mean person energy on the validation pairs
    energy: dict[float, float] = field(default_factory=dict)
    pairs: int = 0
    source: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "power": self.power, "pairs": self.pairs,
                "source": self.source,
                "energy": {f"{p:g}": round(v, 6) for p, v in self.energy.items()}}


def validation_pairs(explainer: ExplainerLike, validation: ReidEvalSet, limit: int | None
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validation queries with a valid true match, their highest-ranked match, their
    ``(N, H, W)`` person masks (the first ``limit``) and the validation gallery's embeddings
    (which ``score="centred"`` takes its centre from)."""
    if validation.query_masks is None:
        raise InputError(f"{validation.name}: choosing a sharpen power needs part masks of "
                         "the validation queries")
    query, gallery = ImageSource(validation.query, "query"), ImageSource(validation.gallery,
                                                                         "gallery")
    def embed(source: ImageSource) -> torch.Tensor:  # in chunks: a gallery can be large
        return torch.cat([explainer.embed(source.get(range(s, min(s + 256, len(source)))))
                          for s in range(0, len(source), 256)])

    q_emb, g_emb = embed(query), embed(gallery)
    match = true_matches(q_emb, g_emb, validation.query_pids, validation.query_camids,
                         validation.gallery_pids, validation.gallery_camids)
    keep = np.flatnonzero(match >= 0)[:limit]
    if len(keep) == 0:
        raise InputError(f"{validation.name}: no validation query has a true match from "
                         "another camera")
    person = torch.as_tensor(validation.query_masks)[torch.as_tensor(keep)].bool().any(dim=1)
    return query.get(keep.tolist()), gallery.get(match[keep].tolist()), person, g_emb


def choose_sharpen(explainer: ExplainerLike, validation: ReidEvalSet, method: str, *,
                   powers: Sequence[float] = SHARPEN_POWERS, max_queries: int | None = 80,
                   method_options: dict[str, Any] | None = None,
                   score: str = "centred") -> SharpenChoice:
    """The ``sharpen`` power of ``method`` with the highest mean person energy on
    ``validation`` (identities never scored), ties to the smaller power; ``score`` as in
    :func:`~.protocol.evaluate` (the maps chosen on are those that will be scored)."""
    options = dict(method_options or {})
    if "sharpen" in options:
        raise InputError("method_options already hold a sharpen power; choose_sharpen "
                         "chooses it")
    if not powers or any(not (isinstance(p, (int, float)) and p > 0) for p in powers):
        raise InputError(f"powers must be positive numbers, got {list(powers)}")
    check_score(score)  # before any work
    query, match, person, g_emb = validation_pairs(explainer, validation, max_queries)
    expl = explainer.explain(query, match, method=method,
                             pairs=[(i, i) for i in range(len(query))], side="query",
                             centre=score_centre(score, g_emb), **options)
    maps = expl.query.upsampled(size=tuple(person.shape[-2:])).double()
    energy = {float(p): float(energy_pointing_game(sharpen_maps(maps, float(p)),
                                                   person[:, None])[:, 0].nanmean())
              for p in powers}
    defined = {p: v for p, v in energy.items() if v == v}
    if not defined:
        raise InputError(f"{method}: no power gives a defined person energy on "
                         f"{validation.name} (maps without positive mass)")
    best = max(defined, key=lambda p: (defined[p], -p))
    return SharpenChoice(method=method, power=best, energy=energy, pairs=len(query),
                         source=validation.name)
