"""Targets: small callables that turn embeddings into the score being explained.

A target is called as ``target(embeddings, *target.args)`` and returns one score per row. Its
``args`` are tensors with one row per explained input, so that batch-expanding attributions
(Integrated Gradients repeats inputs ``n_steps`` times, occlusion ``perturbations_per_eval``
times) can repeat them alongside the inputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


class Target:
    """Base class: subclasses implement ``__call__(embeddings, *args) -> (B,)``."""

    args: tuple[Tensor, ...] = ()

    def __call__(self, embeddings: Tensor, *args: Tensor) -> Tensor:
        raise NotImplementedError

    def select(self, index: Tensor | slice) -> Target:
        """The same target restricted to some rows (for chunked attribution)."""
        raise NotImplementedError


class CosineSimilarity(Target):
    """Cosine similarity of each embedding with its own reference embedding (held fixed).

    The ReID matching score: explaining it on the query image with the gallery embedding as the
    reference, and on the gallery image with the query embedding as the reference, gives the
    two halves of a pair explanation.
    """

    def __init__(self, references: Tensor) -> None:
        if references.dim() != 2:
            raise ValueError(f"references must be (B, D), got {tuple(references.shape)}")
        self.references = references.detach()
        self.args = (self.references,)

    def __call__(self, embeddings: Tensor, references: Tensor | None = None) -> Tensor:
        references = self.references if references is None else references
        return F.cosine_similarity(embeddings, references.to(embeddings.dtype), dim=-1)

    def select(self, index: Tensor | slice) -> CosineSimilarity:
        return CosineSimilarity(self.references[index])


class CentredCosine(Target):
    """Cosine similarity with the reference minus the similarity with a centre: the mean of
    the L2-normalised gallery embeddings, i.e. ``cos(e, r) - mean_j cos(e, g_j)``.

    The score a retrieval ranks by, with what every gallery image shares taken out: on the
    query image it is the match's cosine minus the query's mean cosine with the gallery, so
    it orders the gallery for that query exactly as the cosine does, but features that raise
    the similarity to *any* gallery image (background, clothing common to everyone) add
    nothing to it. ``evaluate`` explains this score by default (``score="centred"``;
    docs/metrics.md, "The explained score", says which figure chose it).
    """

    def __init__(self, references: Tensor, centre: Tensor) -> None:
        if references.dim() != 2:
            raise ValueError(f"references must be (B, D), got {tuple(references.shape)}")
        centre = centre.detach().to(references.device, references.dtype)
        if centre.shape not in ((references.shape[1],), tuple(references.shape)):
            raise ValueError(f"centre must be (D,) or (B, D) for references "
                             f"{tuple(references.shape)}, got {tuple(centre.shape)}")
        self.directions = F.normalize(references.detach(), dim=-1) - centre
        self.args = (self.directions,)

    @classmethod
    def _of(cls, directions: Tensor) -> CentredCosine:
        target = cls.__new__(cls)
        target.directions = directions
        target.args = (directions,)
        return target

    def __call__(self, embeddings: Tensor, directions: Tensor | None = None) -> Tensor:
        directions = self.directions if directions is None else directions
        return (F.normalize(embeddings, dim=-1) * directions.to(embeddings.dtype)).sum(dim=-1)

    def select(self, index: Tensor | slice) -> CentredCosine:
        return CentredCosine._of(self.directions[index])


def similarity_target(references: Tensor, centre: Tensor | None = None) -> Target:
    """The pair score explained: :class:`CosineSimilarity`, or :class:`CentredCosine` about
    ``centre`` when one is given."""
    return CosineSimilarity(references) if centre is None else CentredCosine(references, centre)


class CosineDistance(CosineSimilarity):
    """``1 - cos``: the pair's loss, for explaining what makes two images *differ* (e.g. an
    image and its re-render with one part changed)."""

    def __call__(self, embeddings: Tensor, references: Tensor | None = None) -> Tensor:
        return 1.0 - super().__call__(embeddings, references)

    def select(self, index: Tensor | slice) -> CosineDistance:
        return CosineDistance(self.references[index])


class RecordingCosine(CosineSimilarity):
    """:class:`CosineSimilarity` that also keeps the (normalised) embeddings it scores, row by
    row, in ``store``: an explanation pass over unchanged images then is also their embedding
    pass, and the images need not be run through the host a second time."""

    def __init__(self, references: Tensor, store: Tensor | None = None,
                 rows: Tensor | None = None) -> None:
        super().__init__(references)
        n = references.shape[0]
        self.rows = torch.arange(n) if rows is None else rows
        self.store = store if store is not None else torch.full(
            (n, references.shape[1]), float("nan"))

    def __call__(self, embeddings: Tensor, references: Tensor | None = None) -> Tensor:
        if embeddings.shape[0] == len(self.rows):  # not a method's expanded copies
            self.store[self.rows] = F.normalize(embeddings.detach().float(), dim=-1).cpu()
        return super().__call__(embeddings, references)

    def select(self, index: Tensor | slice) -> RecordingCosine:
        return RecordingCosine(self.references[index], self.store, self.rows[index])
