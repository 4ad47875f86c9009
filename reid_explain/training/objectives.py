"""Base objectives for text-image ReID training, as IRRA (Jiang & Ye, CVPR 2023) defines them.

* ``sdm``: similarity distribution matching: the KL divergence between the softmax of scaled
  cosine similarities and the normalised true-matching distribution (all pairs of the same
  identity are matches), image-to-text plus text-to-image.
* ``itc``: CLIP's symmetric InfoNCE with the diagonal as the only positive.
* ``none``: no base objective, only the plugins' losses (to test a plugin's mechanism on its
  own, e.g. :mod:`reid_explain.studies.ppim_mechanism`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

OBJECTIVES = ("sdm", "itc", "sdm+itc", "none")


def sdm_loss(image_features: Tensor, text_features: Tensor, pids: Tensor,
             logit_scale: float | Tensor = 50.0, epsilon: float = 1e-8) -> Tensor:
    """IRRA's SDM loss on L2-normalised features (IRRA uses logit scale 1/0.02)."""
    image_norm = F.normalize(image_features, dim=-1)
    text_norm = F.normalize(text_features, dim=-1)
    t2i = text_norm @ image_norm.T
    i2t = t2i.T
    labels = (pids[:, None] == pids[None, :]).float()
    labels = labels / labels.sum(dim=1, keepdim=True)
    i2t_pred = F.softmax(logit_scale * i2t, dim=1)
    i2t_loss = i2t_pred * (F.log_softmax(logit_scale * i2t, dim=1) - torch.log(labels + epsilon))
    t2i_pred = F.softmax(logit_scale * t2i, dim=1)
    t2i_loss = t2i_pred * (F.log_softmax(logit_scale * t2i, dim=1) - torch.log(labels + epsilon))
    return i2t_loss.sum(dim=1).mean() + t2i_loss.sum(dim=1).mean()


def itc_loss(image_features: Tensor, text_features: Tensor,
             logit_scale: float | Tensor = 50.0) -> Tensor:
    """CLIP's symmetric InfoNCE (diagonal positives)."""
    image_norm = F.normalize(image_features, dim=-1)
    text_norm = F.normalize(text_features, dim=-1)
    logits = logit_scale * image_norm @ text_norm.T
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def base_objective(name: str, image_features: Tensor, text_features: Tensor, pids: Tensor,
                   logit_scale: float | Tensor = 50.0) -> Tensor:
    if name == "sdm":
        return sdm_loss(image_features, text_features, pids, logit_scale)
    if name == "itc":
        return itc_loss(image_features, text_features, logit_scale)
    if name == "none":
        return (image_features.sum() + text_features.sum()) * 0.0
    if name == "sdm+itc":
        return (sdm_loss(image_features, text_features, pids, logit_scale)
                + itc_loss(image_features, text_features, logit_scale))
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {name!r}")
