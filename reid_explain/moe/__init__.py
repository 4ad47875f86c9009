"""MoSAIC-ReID: attribute LoRA experts (peft) mixed per sample by an oracle or learned router.

The residual mixture itself is the ``lora_moe`` backbone-modification plugin
(``reid_explain.plugins.moe.lora_moe``); this package holds what it is made of and trained with:
the expert layout of an attribute schema, the gated sum of peft LoRA deltas, the routers and the
reference training functions. See ``docs/mosaic.md``.
"""

from __future__ import annotations

from .experts import Expert, ExpertGroup, ExpertLayout
from .mixture import GatedLoraSum, RoutingPlan, make_plan, pooled

__all__ = ["Expert", "ExpertGroup", "ExpertLayout", "GatedLoraSum", "RoutingPlan", "make_plan",
           "pooled"]
