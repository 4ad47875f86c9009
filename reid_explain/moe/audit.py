"""The causal attribute audit of a trained MoSAIC-ReID model (issue 28, step 3).

:func:`~reid_explain.attributes.causal.causal_audit` re-renders each SynthPedes query with one
attribute changed; here the model embedding the renders is a MoE, routed as it would be in
use: by the oracle from the rendered person's codes, or by a learned router from the pixels, or
not at all (the host alone), so that what the experts add can be told from what the host
already relies on (docs/attribute_study.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from reid_explain.attributes.causal import causal_audit
from reid_explain.moe.ablation import oracle_embed
from reid_explain.moe.routers import predicted_codes

__all__ = ["moe_causal_audit"]


def moe_causal_audit(moe: Any, config: Any, mean: Sequence[float], std: Sequence[float], *,
                     router: Any = None, experts: bool = True, seed: int = 0) -> Any:
    """The causal audit (:func:`~reid_explain.attributes.causal.causal_audit`) of a trained
    MoSAIC model on the SynthPedes set ``config``, in eval mode (modes restored).

    Routing: by the oracle from each rendered person's codes (a changed render is routed as
    the person it now shows), or, with ``router``, by the router's hard predictions from the
    pixels (the deployable model). ``experts=False`` audits the host alone (every expert off),
    to tell what the experts add from what the host already relies on."""
    model = moe.model
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        if not experts:
            def host(images: torch.Tensor) -> torch.Tensor:
                with moe.bypass():
                    return moe.adapter.embed_image(images)

            return causal_audit(host, config, mean=mean, std=std, seed=seed)
        if router is not None:
            router.eval()
            return causal_audit(lambda images: oracle_embed(
                moe, images, predicted_codes(moe, router, images)), config, mean=mean, std=std,
                seed=seed)
        return causal_audit(lambda images, codes: oracle_embed(moe, images, codes), config,
                            mean=mean, std=std, seed=seed, with_codes=True)
    finally:
        for module, mode in modes:
            module.training = mode
