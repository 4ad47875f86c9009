"""The expert layout of MoSAIC-ReID: which LoRA experts an attribute schema asks for.

One *group* per attribute, whose kind fixes how many experts it has and when they fire:

* ``presence`` (hat, backpack): one expert, active only when the attribute is present (code 1,
  the schema's ``"yes"`` state);
* ``two_state`` (gender, sleeve length): two experts, the one of the observed state active;
* ``multiclass`` (age, colours): one expert per class, the one of the observed class active.

An unknown attribute (code -1) activates no expert of its group. The layout turns the per-sample
integer codes of :func:`reid_explain.data.attributes.attribute_codes` (schema order, state
indices) into the ``(B, E)`` gates of the oracle router, and back from a group name to the experts
an ablation switches off. Expert names are valid peft adapter names (no dots).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from reid_explain.data.schema import AttributeKind, AttributeSchema

#: index of the state of a presence attribute that means "present" (schema states ("no", "yes"))
PRESENT = 1


def _adapter_name(prefix: str, attribute: str, state: str) -> str:
    """A peft adapter name: ModuleDict keys may not contain dots."""
    return re.sub(r"[^0-9A-Za-z_]", "_", f"{prefix}{attribute}_{state}")


@dataclass(frozen=True)
class Expert:
    """One LoRA expert: the peft adapter ``name`` for ``attribute`` being in ``state``."""

    index: int
    name: str
    attribute: str
    state: str
    state_index: int


@dataclass(frozen=True)
class ExpertGroup:
    """The experts of one attribute; ``experts`` are global expert indices, in state order."""

    attribute: str
    kind: AttributeKind
    experts: tuple[int, ...]
    #: state index -> position in ``experts`` (presence: only the present state has an expert)
    states: tuple[int, ...]


class ExpertLayout:
    """Experts and groups for an attribute schema, and the oracle gates from attribute codes."""

    def __init__(self, schema: str | AttributeSchema, prefix: str = "moe_",
                 attributes: Sequence[str] | None = None) -> None:
        # imported here: reading attribute tables needs pandas and scipy, which registering
        # the lora_moe plugin (every command's start) should not pay for
        from reid_explain.data.attributes import resolve_schema

        self.schema = resolve_schema(schema)
        chosen = tuple(attributes) if attributes is not None else self.schema.names
        unknown = [a for a in chosen if a not in self.schema.names]
        if unknown:
            raise ValueError(f"schema {self.schema.name!r} has no attribute(s) {unknown}; "
                             f"known: {list(self.schema.names)}")
        experts: list[Expert] = []
        groups: list[ExpertGroup] = []
        for attribute in self.schema:
            if attribute.name not in chosen:
                continue
            states = ((PRESENT,) if attribute.kind is AttributeKind.PRESENCE
                      else tuple(range(len(attribute.states))))
            start = len(experts)
            for s in states:
                experts.append(Expert(len(experts), _adapter_name(prefix, attribute.name,
                                                                   attribute.states[s]),
                                      attribute.name, attribute.states[s], s))
            groups.append(ExpertGroup(attribute.name, attribute.kind,
                                      tuple(range(start, len(experts))), states))
        self.experts: tuple[Expert, ...] = tuple(experts)
        self.groups: tuple[ExpertGroup, ...] = tuple(groups)
        #: column of each group's attribute in schema-ordered code matrices
        self.columns: tuple[int, ...] = tuple(self.schema.names.index(g.attribute)
                                              for g in groups)
        names = [e.name for e in experts]
        if len(set(names)) != len(names):
            raise ValueError(f"schema {self.schema.name!r} gives duplicate expert names {names}")

    # -- lookup --------------------------------------------------------------------------------
    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(e.name for e in self.experts)

    @property
    def group_names(self) -> tuple[str, ...]:
        return tuple(g.attribute for g in self.groups)

    def group(self, name: str) -> ExpertGroup:
        for group in self.groups:
            if group.attribute == name:
                return group
        raise KeyError(f"no expert group {name!r}; groups: {list(self.group_names)}")

    def group_of(self) -> Tensor:
        """``(E,)`` group index of every expert (for per-group reductions)."""
        out = torch.empty(self.num_experts, dtype=torch.long)
        for g, group in enumerate(self.groups):
            out[list(group.experts)] = g
        return out

    def expert_mask(self, groups: Iterable[str]) -> Tensor:
        """``(E,)`` bool, True for the experts of ``groups``."""
        mask = torch.zeros(self.num_experts, dtype=torch.bool)
        for name in groups:
            mask[list(self.group(name).experts)] = True
        return mask

    # -- oracle --------------------------------------------------------------------------------
    def gates(self, codes: Tensor | Sequence[Sequence[int]]) -> Tensor:
        """Oracle gates ``(B, E)`` (0/1 floats) from ``(B, A)`` codes in schema order.

        ``A`` is the schema's number of attributes (the layout's columns are picked out), code -1
        (or any code without an expert, e.g. presence "no") activates nothing in its group.
        """
        codes = torch.as_tensor(codes, dtype=torch.long).cpu()
        if codes.dim() != 2 or codes.shape[1] != len(self.schema):
            raise ValueError(f"attribute codes must be (B, {len(self.schema)}) in the order of "
                             f"schema {self.schema.name!r}, got shape {tuple(codes.shape)}")
        gates = torch.zeros(codes.shape[0], self.num_experts)
        for group, column in zip(self.groups, self.columns, strict=True):
            code = codes[:, column]
            for position, state in enumerate(group.states):
                gates[code == state, group.experts[position]] = 1.0
            bad = (code < -1) | (code >= len(self.schema[group.attribute].states))
            if bool(bad.any()):
                raise ValueError(f"attribute {group.attribute!r}: codes {code[bad].tolist()} "
                                 f"outside -1..{len(self.schema[group.attribute].states) - 1}")
        return gates

    def describe(self) -> dict:
        return {"schema": self.schema.name, "num_experts": self.num_experts,
                "groups": {g.attribute: {"kind": g.kind.value,
                                         "experts": [self.experts[i].name for i in g.experts]}
                           for g in self.groups}}
