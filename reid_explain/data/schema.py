"""Attribute schemas: which semantic attributes a ReID data set labels, and of which kind.

The kind decides how MoSAIC-ReID builds experts for an attribute and how the attribute-importance
study encodes it:

* ``presence`` (single-state binary): one state that is either there or not (hat, backpack).
  One expert, active only when the attribute is present.
* ``two_state`` (dual-state binary): exactly one of two states (male/female, short/long sleeve).
  Two experts, one active.
* ``multiclass``: one of several classes (age group, upper-body colour). One expert per class,
  exactly one active. In the official ``.mat`` files a multiclass attribute is stored either as one
  field with codes 1..K (``age``) or as one binary field per class (``upblack`` ... ``upgreen``).

``fields`` are the names of the ``.mat`` fields that hold the attribute; ``part`` is the body part
(SynthPedes mask name) in which the attribute is visible, used to check grounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class AttributeKind(str, Enum):
    PRESENCE = "presence"
    TWO_STATE = "two_state"
    MULTICLASS = "multiclass"


#: Body-part masks SynthPedes renders; attribute ``part`` values are drawn from these.
PARTS: tuple[str, ...] = (
    "head", "hair", "hat", "upper_body", "lower_body", "shoes", "backpack", "bag", "handbag",
)


@dataclass(frozen=True)
class Attribute:
    """One semantic attribute.

    ``states`` are the human-readable values in code order: for ``presence`` ``("no", "yes")``
    (codes 1, 2 in the official files), for ``two_state`` the two states in code order 1, 2,
    for ``multiclass`` the classes in code order 1..K (or field order for one-field-per-class).
    """

    name: str
    kind: AttributeKind
    states: tuple[str, ...]
    fields: tuple[str, ...]
    part: str | None = None

    @property
    def one_field_per_class(self) -> bool:
        return self.kind is AttributeKind.MULTICLASS and len(self.fields) > 1

    def __post_init__(self) -> None:
        if self.kind in (AttributeKind.PRESENCE, AttributeKind.TWO_STATE) and len(self.states) != 2:
            raise ValueError(f"attribute {self.name!r}: a binary attribute has exactly 2 states")
        if self.one_field_per_class and len(self.fields) != len(self.states):
            raise ValueError(f"attribute {self.name!r}: one field per class, got "
                             f"{len(self.fields)} fields for {len(self.states)} classes")
        if self.part is not None and self.part not in PARTS:
            raise ValueError(f"attribute {self.name!r}: unknown part {self.part!r}; known: {PARTS}")


@dataclass(frozen=True)
class AttributeSchema:
    name: str
    attributes: tuple[Attribute, ...]

    def __getitem__(self, name: str) -> Attribute:
        for attribute in self.attributes:
            if attribute.name == name:
                return attribute
        raise KeyError(f"schema {self.name!r} has no attribute {name!r}; "
                       f"known: {[a.name for a in self.attributes]}")

    def __iter__(self):
        return iter(self.attributes)

    def __len__(self) -> int:
        return len(self.attributes)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.attributes)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(f for a in self.attributes for f in a.fields)


_YES_NO = ("no", "yes")
_MARKET_UP = ("black", "white", "red", "purple", "yellow", "gray", "blue", "green")
_MARKET_DOWN = ("black", "white", "pink", "purple", "yellow", "gray", "blue", "green", "brown")

MARKET1501 = AttributeSchema("market1501", (
    Attribute("gender", AttributeKind.TWO_STATE, ("male", "female"), ("gender",), "head"),
    Attribute("hair", AttributeKind.TWO_STATE, ("short", "long"), ("hair",), "hair"),
    Attribute("sleeve", AttributeKind.TWO_STATE, ("long", "short"), ("up",), "upper_body"),
    Attribute("lower_length", AttributeKind.TWO_STATE, ("long", "short"), ("down",), "lower_body"),
    Attribute("clothes", AttributeKind.TWO_STATE, ("dress", "pants"), ("clothes",), "lower_body"),
    Attribute("hat", AttributeKind.PRESENCE, _YES_NO, ("hat",), "hat"),
    Attribute("backpack", AttributeKind.PRESENCE, _YES_NO, ("backpack",), "backpack"),
    Attribute("bag", AttributeKind.PRESENCE, _YES_NO, ("bag",), "bag"),
    Attribute("handbag", AttributeKind.PRESENCE, _YES_NO, ("handbag",), "handbag"),
    Attribute("age", AttributeKind.MULTICLASS, ("young", "teenager", "adult", "old"), ("age",),
              "head"),
    Attribute("upper_color", AttributeKind.MULTICLASS, _MARKET_UP,
              tuple(f"up{c}" for c in _MARKET_UP), "upper_body"),
    Attribute("lower_color", AttributeKind.MULTICLASS, _MARKET_DOWN,
              tuple(f"down{c}" for c in _MARKET_DOWN), "lower_body"),
))

_DUKE_UP = ("black", "white", "red", "purple", "gray", "blue", "green", "brown")
_DUKE_DOWN = ("black", "white", "red", "gray", "blue", "green", "brown")

DUKEMTMC = AttributeSchema("dukemtmc", (
    Attribute("gender", AttributeKind.TWO_STATE, ("male", "female"), ("gender",), "head"),
    Attribute("top", AttributeKind.TWO_STATE, ("short", "long"), ("top",), "upper_body"),
    Attribute("boots", AttributeKind.PRESENCE, _YES_NO, ("boots",), "shoes"),
    Attribute("hat", AttributeKind.PRESENCE, _YES_NO, ("hat",), "hat"),
    Attribute("backpack", AttributeKind.PRESENCE, _YES_NO, ("backpack",), "backpack"),
    Attribute("bag", AttributeKind.PRESENCE, _YES_NO, ("bag",), "bag"),
    Attribute("handbag", AttributeKind.PRESENCE, _YES_NO, ("handbag",), "handbag"),
    Attribute("shoes", AttributeKind.TWO_STATE, ("dark", "light"), ("shoes",), "shoes"),
    Attribute("upper_color", AttributeKind.MULTICLASS, _DUKE_UP,
              tuple(f"up{c}" for c in _DUKE_UP), "upper_body"),
    Attribute("lower_color", AttributeKind.MULTICLASS, _DUKE_DOWN,
              tuple(f"down{c}" for c in _DUKE_DOWN), "lower_body"),
))

SCHEMAS: dict[str, AttributeSchema] = {s.name: s for s in (MARKET1501, DUKEMTMC)}
