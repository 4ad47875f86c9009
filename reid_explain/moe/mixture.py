"""The gated sum of peft LoRA experts: per sample, any set of experts, in one batch.

peft's own forward either adds every active adapter to every sample (``set_adapter([...])``) or,
with ``adapter_names=[...]``, one adapter per sample and only at inference. MoSAIC's oracle router
needs a per-sample *set* of experts, so the residual mixture is computed here from the peft layer's
own modules (``lora_A[e]``, ``lora_B[e]``, ``lora_dropout[e]``, ``scaling[e]``)::

    delta[b] = sum_e w[b, e] * scaling[e] * lora_B[e](lora_A[e](lora_dropout[e](x[b])))

with ``w = gates`` (pooling "sum") or ``gates / gates.sum(1)`` (pooling "mean"). One-hot gates
give peft's single-adapter forward, several ones give peft's multi-active sum.

Two vectorised paths, chosen once per forward by :func:`make_plan`:

* **slots** (hard gates: at most one nonzero gate per attribute group and sample, the oracle
  router's case): each sample has one slot per routed group, padded to the batch's most-routed
  sample; the slot's expert weights are gathered and two batched matmuls apply only those ``S``
  experts, not all ``E`` (groups routed nowhere in the batch cost nothing).
* **dense** (soft gates, e.g. router probabilities): all experts' factors stacked into one
  ``(E*r, d)`` matrix; two matmuls for the whole batch.

Rows never interact, so changing one sample's gates leaves every other sample bit-identical:
a row's sum runs over its routed slots in group order whatever the slot count, and a padding
slot (weight 0) adds exact zeros (``tests/test_lora_moe.py`` checks this under ablation).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

Pooling = Literal["mean", "sum"]


@dataclass(frozen=True)
class RoutingPlan:
    """Gate weights of one forward, prepared once and read by every LoRA layer."""

    batch: int
    #: slot path: (B, S) expert index per slot and (B, S) pooled gate weight (0 = empty slot)
    index: Tensor | None = None
    weight: Tensor | None = None
    #: dense path: (B, E) pooled gate weights
    dense: Tensor | None = None

    @property
    def empty(self) -> bool:
        w = self.weight if self.weight is not None else self.dense
        return w is None or not bool(w.any())

    def to(self, device: torch.device) -> RoutingPlan:
        move = (lambda t: None if t is None else t.to(device))  # noqa: E731
        return RoutingPlan(self.batch, move(self.index), move(self.weight), move(self.dense))


def pooled(gates: Tensor, pooling: Pooling) -> Tensor:
    """Gate weights after pooling: "mean" divides by the sample's total gate (0 stays 0)."""
    if pooling == "sum":
        return gates
    if pooling == "mean":
        total = gates.sum(dim=1, keepdim=True)
        return torch.where(total != 0, gates / torch.where(total != 0, total, 1.0), 0.0)
    raise ValueError(f"pooling must be 'mean' or 'sum', got {pooling!r}")


def make_plan(gates: Tensor, group_of: Tensor, num_groups: int, pooling: Pooling,
              dense: bool | None = None) -> RoutingPlan:
    """The plan for ``(B, E)`` gates; ``dense=None`` picks slots when the gates allow it."""
    if gates.dim() != 2 or gates.shape[1] != group_of.numel():
        raise ValueError(f"gates must be (B, {group_of.numel()}), got {tuple(gates.shape)}")
    if not bool(torch.isfinite(gates).all()):
        raise ValueError("gates contain NaN or inf")
    weights = pooled(gates.float(), pooling)
    batch = gates.shape[0]
    nonzero = weights != 0
    group_of = group_of.to(gates.device)
    per_group = torch.zeros(batch, num_groups, device=gates.device)
    per_group.index_add_(1, group_of, nonzero.float())
    if dense is None:
        dense = bool((per_group > 1).any())
    if dense:
        return RoutingPlan(batch, dense=weights)
    if bool((per_group > 1).any()):
        raise ValueError("slot routing needs at most one nonzero gate per group and sample")
    experts = torch.arange(gates.shape[1], device=gates.device).expand(batch, -1)
    first = torch.full((num_groups,), gates.shape[1], dtype=torch.long, device=gates.device)
    first = first.scatter_reduce(0, group_of, torch.arange(gates.shape[1], device=gates.device),
                                 reduce="amin")
    chosen = torch.where(nonzero, experts, -1)
    index = torch.full((batch, num_groups), -1, dtype=torch.long, device=gates.device)
    index = index.scatter_reduce(1, group_of.expand(batch, -1), chosen, reduce="amax")
    index = torch.where(index >= 0, index, first.expand(batch, -1))  # empty slot: weight 0
    weight = weights.gather(1, index)
    # compact: each sample's routed slots first (in group order), then only as many slots as
    # the most-routed sample has (an absent hat or colour routes nothing: most presence slots
    # are empty); the padding slots keep weight 0 and add exact zeros
    active = weight != 0
    width = int(active.sum(dim=1).max()) if batch else 0
    order = torch.sort((~active).to(torch.uint8), dim=1, stable=True).indices[:, :width]
    return RoutingPlan(batch, index=index.gather(1, order), weight=weight.gather(1, order))


class Workspace:
    """Reused buffers for the per-sample expert factors that the slot path gathers.

    Without gradients, each layer's gathered factors live only for its own two matmuls, and
    the layers of a forward run one after another, so one buffer per role (``"a"``, ``"b"``),
    per thread and device, serves every layer that shares the workspace. Gathering into a
    fresh tensor costs 4x a gather into a reused one (measured: 1.5 vs 0.37 ms for 9.4 MB on
    one thread), nearly all of it in allocating and first touching the pages. The buffers grow
    to the largest request and are held until :meth:`clear`.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple, Tensor] = {}

    def get(self, role: str, shape: tuple[int, ...], dtype: torch.dtype,
            device: torch.device) -> Tensor:
        """A ``shape`` view of the ``role`` buffer (contents undefined)."""
        key = (role, threading.get_ident(), dtype, device)
        numel = math.prod(shape)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.numel() < numel:
            buffer = self._buffers[key] = torch.empty(numel, dtype=dtype, device=device)
        return buffer[:numel].view(shape)

    def clear(self) -> None:
        self._buffers.clear()


class GatedLoraSum:
    """The mixture delta of one peft ``LoraLayer`` (Linear), read from its own modules.

    ``workspace``: buffers shared with the other layers of the same model (see
    :class:`Workspace`); without one, the gathered factors are allocated per call.
    """

    def __init__(self, layer: nn.Module, names: Sequence[str],
                 workspace: Workspace | None = None) -> None:
        missing = [n for n in names if n not in layer.lora_A]
        if missing:
            raise ValueError(f"peft layer has no adapter(s) {missing}")
        self.layer = layer
        self.names = tuple(names)
        self.workspace = workspace
        self._stacked: tuple[tuple, tuple[Tensor, Tensor, Tensor]] | None = None
        self._modules: list[nn.Module] | None = None

    def _factors(self, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Stacked ``A (E, r, d_in)``, ``B^T (E, r, d_out)`` and ``scaling (E,)``.

        Without gradients the stacks are kept until a weight changes (its storage or in-place
        version counter), so inference does not copy every expert's factors per forward."""
        if self._modules is None:
            self._modules = [self.layer.lora_A[n] for n in self.names] + \
                            [self.layer.lora_B[n] for n in self.names]
        weights = [m.weight for m in self._modules]
        grad = torch.is_grad_enabled() and any(w.requires_grad for w in weights)
        key = (dtype, tuple(float(self.layer.scaling[n]) for n in self.names),
               tuple((w.data_ptr(), w._version, w.device) for w in weights))
        if not grad and self._stacked is not None and self._stacked[0] == key:
            return self._stacked[1]
        a = torch.stack([self.layer.lora_A[n].weight for n in self.names]).to(dtype)
        b = torch.stack([self.layer.lora_B[n].weight.t() for n in self.names]).to(dtype)
        scale = torch.tensor(key[1], dtype=dtype, device=a.device)
        self._stacked = None if grad else (key, (a, b, scale))
        return a, b, scale

    def _needs_dropout(self) -> bool:
        return self.layer.training and any(
            not isinstance(self.layer.lora_dropout[n], nn.Identity) for n in self.names)

    def add_to(self, output: Tensor, x: Tensor, plan: RoutingPlan, batch_dim: int = 0,
               inplace: bool = False) -> Tensor:
        """``output`` (the frozen layer's) plus the mixture delta for input ``x``.

        The delta is accumulated into the output by the second matmul itself (``baddbmm`` /
        ``addmm``), which saves a pass over the output; nothing routed returns ``output``.
        ``inplace=True`` (a forward hook's own output, without gradients) writes into
        ``output`` instead of a copy.
        """
        if plan.empty:
            return output
        if batch_dim:
            x, output = x.movedim(batch_dim, 0), output.movedim(batch_dim, 0)
        if x.shape[0] != plan.batch:
            raise RuntimeError(f"the experts were routed for {plan.batch} samples but the forward "
                               f"has {x.shape[0]}; route each batch with its own attributes")
        shape = output.shape
        dtype = self.layer.lora_A[self.names[0]].weight.dtype
        flat_x = x.reshape(shape[0], -1, x.shape[-1]).to(dtype)
        flat_out = output.reshape(shape[0], -1, shape[-1])
        if self._needs_dropout():
            out = flat_out + self._looped(flat_x, plan).to(output.dtype)
        elif plan.dense is not None:
            out = self._dense(flat_out, flat_x, plan.dense)
        else:
            out = self._slots(flat_out, flat_x, plan.index, plan.weight,
                              inplace and not torch.is_grad_enabled())
        out = out.reshape(shape)
        return out.movedim(0, batch_dim) if batch_dim else out

    def _slots(self, out: Tensor, x: Tensor, index: Tensor, weight: Tensor,
               inplace: bool = False) -> Tensor:
        a, b, scale = self._factors(x.dtype)
        batch, slots = index.shape
        rank = a.shape[1]
        flat_index = index.reshape(-1)
        flat_a, flat_b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        if self.workspace is not None and not torch.is_grad_enabled():
            a_sel = torch.index_select(flat_a, 0, flat_index, out=self.workspace.get(
                "a", (flat_index.numel(), flat_a.shape[1]), a.dtype, a.device))
            b_sel = torch.index_select(flat_b, 0, flat_index, out=self.workspace.get(
                "b", (flat_index.numel(), flat_b.shape[1]), b.dtype, b.device))
        else:
            a_sel, b_sel = flat_a.index_select(0, flat_index), flat_b.index_select(0, flat_index)
        a_sel = a_sel.reshape(batch, slots * rank, a.shape[2])
        b_sel = b_sel.reshape(batch, slots * rank, b.shape[2]).to(out.dtype)
        w = (weight.to(x.dtype) * scale[index]).repeat_interleave(rank, dim=1)
        h = torch.bmm(x, a_sel.transpose(1, 2)) * w[:, None, :]
        if inplace:
            return out.baddbmm_(h.to(out.dtype), b_sel)
        return torch.baddbmm(out, h.to(out.dtype), b_sel)

    def _dense(self, out: Tensor, x: Tensor, weight: Tensor) -> Tensor:
        a, b, scale = self._factors(x.dtype)
        rank = a.shape[1]
        w = (weight.to(x.dtype) * scale).repeat_interleave(rank, dim=1)
        h = torch.matmul(x, a.reshape(-1, a.shape[2]).t()) * w[:, None, :]
        flat = torch.addmm(out.reshape(-1, out.shape[-1]), h.reshape(-1, h.shape[-1]).to(out.dtype),
                           b.reshape(-1, b.shape[2]).to(out.dtype))
        return flat.reshape(out.shape)

    def _looped(self, x: Tensor, plan: RoutingPlan) -> Tensor:
        """Training with LoRA dropout: each expert its own dropout mask, as in peft."""
        if plan.dense is not None:
            weight = plan.dense
        else:
            weight = torch.zeros(plan.batch, len(self.names), dtype=plan.weight.dtype,
                                 device=plan.weight.device)
            weight = weight.scatter_add(1, plan.index, plan.weight)
        out: Tensor | None = None
        for e, name in enumerate(self.names):
            rows = torch.nonzero(weight[:, e]).flatten()
            if rows.numel() == 0:
                continue
            layer = self.layer
            y = layer.lora_B[name](layer.lora_A[name](layer.lora_dropout[name](x[rows])))
            y = y * (float(layer.scaling[name]) * weight[rows, e].to(x.dtype))[:, None, None]
            if out is None:
                out = x.new_zeros(*x.shape[:-1], y.shape[-1])
            out = out.index_add(0, rows, y)
        if out is None:
            out_features = self.layer.lora_B[self.names[0]].weight.shape[0]
            out = x.new_zeros(*x.shape[:-1], out_features)
        return out
