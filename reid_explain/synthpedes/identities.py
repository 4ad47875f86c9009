"""SynthPedes identities: Market-1501 attribute combinations with a *planted* importance order.

Why planted: an attribute-importance study run on SynthPedes must be checkable against a known
answer. We plant importance as the attribute's **information about identity**: since an
identity's attribute value is fixed, the mutual information I(attribute; identity) equals the
entropy H(attribute) of its value distribution across identities. The attribute ranked first in
``planted_order`` gets the highest entropy, each following one ``decay`` times the previous
(capped by log2 of its number of values), so the planted entropies are strictly decreasing.
Values are allocated by exact quotas (largest remainder), not i.i.d. draws, so the *empirical*
entropies follow the planted order even for a few hundred identities.

Realism coupling (``couple=True``, the default): after the quotas are fixed, dresses and long
hair are handed to female identities first. This keeps every attribute's marginal distribution,
hence its planted entropy, exactly as planted, but makes clothes/hair depend on gender (as in
real data); pass ``couple=False`` for independent attributes.

Fine detail (shade within a colour class, texture, build, hair/shoe/bag colours) makes two
identities that share every attribute still differ; ``detail_strength`` scales how much, and it
is weak by default so that the attributes drive matching.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from reid_explain.data.schema import MARKET1501, Attribute
from reid_explain.errors import InputError

#: Default planted order, most identity-separating first: lower-body colour most, accessories least.
DEFAULT_PLANTED_ORDER: tuple[str, ...] = (
    "lower_color", "upper_color", "gender", "clothes", "lower_length", "sleeve", "hair", "age",
    "hat", "backpack", "bag", "handbag",
)

#: The value an attribute concentrates on when it is planted as unimportant (low entropy).
COMMON_VALUE: dict[str, str] = {
    "gender": "male", "hair": "short", "sleeve": "short", "lower_length": "long",
    "clothes": "pants", "hat": "no", "backpack": "no", "bag": "no", "handbag": "no",
    "age": "adult", "upper_color": "white", "lower_color": "black",
}

#: Base RGB of every colour word used by SynthPedes (Market-1501 colours plus detail colours).
COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (30, 30, 34), "white": (228, 228, 222), "red": (196, 36, 36),
    "purple": (120, 50, 150), "yellow": (225, 200, 40), "gray": (128, 128, 128),
    "blue": (40, 70, 190), "green": (40, 140, 60), "pink": (235, 130, 170),
    "brown": (120, 75, 40), "blonde": (232, 196, 64), "orange": (230, 120, 30),
    "beige": (200, 180, 140), "navy": (25, 35, 90),
}
HAIR_COLOURS = ("black", "brown", "blonde")
SHOE_COLOURS = ("black", "white", "brown", "gray")
ACCESSORY_COLOURS = ("black", "brown", "red", "blue", "gray", "beige", "navy", "green")
HAT_COLOURS = ("black", "white", "red", "blue", "gray", "beige")
PATTERNS = ("plain", "hstripes", "vstripes", "checks")
SKIN_TONES: tuple[tuple[int, int, int], ...] = (
    (236, 200, 170), (220, 180, 140), (190, 145, 105), (150, 105, 75), (110, 75, 55),
)


@dataclass(frozen=True)
class IdentityDetail:
    """Identity-specific appearance that no attribute names (why two look-alikes still differ)."""

    upper_shade: tuple[float, float, float]
    lower_shade: tuple[float, float, float]
    pattern: str
    pattern_freq: float
    pattern_contrast: float
    height: float
    build: float
    skin: tuple[int, int, int]
    hair_colour: str
    shoe_colour: str
    hat_colour: str
    backpack_colour: str
    bag_colour: str
    handbag_colour: str


@dataclass(frozen=True)
class Identity:
    """One synthetic person: Market-1501 attribute states plus fine detail."""

    pid: int
    attributes: tuple[tuple[str, str], ...]
    detail: IdentityDetail

    def get(self, name: str) -> str:
        for key, value in self.attributes:
            if key == name:
                return value
        raise KeyError(name)

    def as_dict(self) -> dict[str, str]:
        return dict(self.attributes)

    def to_json(self) -> dict:
        return {"pid": self.pid, "attributes": self.as_dict(), "codes": market_codes(self),
                "detail": asdict(self.detail)}


def resolve_planted_order(planted_order: Sequence[str] | None) -> tuple[str, ...]:
    """Full order over all Market attributes; unnamed ones follow in default order."""
    if planted_order is None:
        return DEFAULT_PLANTED_ORDER
    order = tuple(planted_order)
    unknown = [n for n in order if n not in MARKET1501.names]
    if unknown:
        raise InputError(f"planted_order: unknown attribute(s) {unknown}; "
                         f"known: {list(MARKET1501.names)}")
    if len(set(order)) != len(order):
        raise InputError(f"planted_order: repeated attribute in {list(order)}")
    return order + tuple(n for n in DEFAULT_PLANTED_ORDER if n not in order)


def planted_entropies(planted_order: Sequence[str] | None = None,
                      decay: float = 0.88) -> dict[str, float]:
    """Target entropy in bits per attribute: strictly decreasing along the planted order."""
    if not 0.0 < decay < 1.0:
        raise InputError(f"planted decay must be in (0, 1), got {decay}")
    targets: dict[str, float] = {}
    previous = math.inf
    for name in resolve_planted_order(planted_order):
        bits = min(math.log2(len(MARKET1501[name].states)), previous * decay)
        targets[name] = bits
        previous = bits
    return targets


def _entropy_bits(p: np.ndarray) -> float:
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def value_distribution(attribute: Attribute, bits: float) -> np.ndarray:
    """Distribution over ``attribute.states`` with entropy ``bits``: one common value, rest even.

    The entropy of (q, (1-q)/(K-1), ...) falls monotonically as q goes from 1/K to 1, so a
    bisection finds q.
    """
    k = len(attribute.states)
    common = attribute.states.index(COMMON_VALUE[attribute.name])

    def dist(q: float) -> np.ndarray:
        p = np.full(k, (1.0 - q) / (k - 1))
        p[common] = q
        return p

    lo, hi = 1.0 / k, 1.0
    if bits >= math.log2(k) - 1e-12:
        return dist(lo)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if _entropy_bits(dist(mid)) > bits:
            lo = mid
        else:
            hi = mid
    return dist(0.5 * (lo + hi))


def _quota(p: np.ndarray, n: int) -> np.ndarray:
    """Integer counts summing to n, proportional to p (largest remainder)."""
    raw = p * n
    counts = np.floor(raw).astype(int)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    return counts


def _detail(rng: np.random.Generator, strength: float) -> IdentityDetail:
    def shade() -> tuple[float, float, float]:
        common = rng.uniform(-1, 1)  # lighter/darker, then a small hue tilt
        return tuple(float(round(40 * strength * (common + 0.3 * rng.uniform(-1, 1)), 3))
                     for _ in range(3))

    def pick(options: Sequence[str]) -> str:
        return str(options[int(rng.integers(len(options)))])

    skin = SKIN_TONES[int(rng.integers(len(SKIN_TONES)))]
    return IdentityDetail(
        upper_shade=shade(), lower_shade=shade(),
        pattern=pick(PATTERNS) if rng.random() < 0.3 + 0.5 * strength else "plain",
        pattern_freq=float(round(rng.uniform(14, 30), 3)),
        pattern_contrast=float(round(rng.uniform(0.1, 0.5) * strength, 3)),
        height=float(round(1.0 + 0.08 * strength * rng.uniform(-1, 1), 4)),
        build=float(round(1.0 + 0.15 * strength * rng.uniform(-1, 1), 4)),
        skin=skin, hair_colour=pick(HAIR_COLOURS), shoe_colour=pick(SHOE_COLOURS),
        hat_colour=pick(HAT_COLOURS), backpack_colour=pick(ACCESSORY_COLOURS),
        bag_colour=pick(ACCESSORY_COLOURS), handbag_colour=pick(ACCESSORY_COLOURS),
    )


def _couple(column: list[str], value: str, anchor: list[str], anchor_value: str,
            rng: np.random.Generator) -> list[str]:
    """Reassign ``column`` (same counts) so ids with ``anchor_value`` get ``value`` first."""
    first = [i for i, a in enumerate(anchor) if a == anchor_value]
    rest = [i for i, a in enumerate(anchor) if a != anchor_value]
    priority = [int(i) for i in rng.permutation(first)] + [int(i) for i in rng.permutation(rest)]
    k = column.count(value)
    others = [v for v in column if v != value]
    out = list(column)
    for rank, i in enumerate(priority):
        out[i] = value if rank < k else others[rank - k]
    return out


def make_identities(n_ids: int, seed: int = 0, planted_order: Sequence[str] | None = None,
                    decay: float = 0.88, detail_strength: float = 0.3,
                    first_pid: int = 1, couple: bool = True) -> list[Identity]:
    """``n_ids`` identities with pids ``first_pid..``, attribute entropies as planted."""
    if n_ids < 1:
        raise InputError(f"need at least one identity, got n_ids={n_ids}")
    if not 0.0 <= detail_strength <= 1.0:
        raise InputError(f"detail_strength must be in [0, 1], got {detail_strength}")
    targets = planted_entropies(planted_order, decay)
    columns: dict[str, list[str]] = {}
    for i, attribute in enumerate(MARKET1501):
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0xA77, i])))
        counts = _quota(value_distribution(attribute, targets[attribute.name]), n_ids)
        values = np.repeat(np.arange(len(attribute.states)), counts)
        columns[attribute.name] = [attribute.states[v] for v in rng.permutation(values)]
    if couple:
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0xC0F])))
        gender = columns["gender"]
        columns["clothes"] = _couple(columns["clothes"], "dress", gender, "female", rng)
        columns["hair"] = _couple(columns["hair"], "long", gender, "female", rng)
    identities = []
    for j in range(n_ids):
        pid = first_pid + j
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0xDE7, pid])))
        attrs = tuple((name, columns[name][j]) for name in MARKET1501.names)
        identities.append(Identity(pid, attrs, _detail(rng, detail_strength)))
    return identities


def market_codes(identity: Identity) -> dict[str, int]:
    """Codes as in ``market_attribute.mat``: binary 1/2 in state order, ``age`` 1..4, one field
    per colour class with 2 = this colour."""
    codes: dict[str, int] = {}
    for attribute in MARKET1501:
        value = identity.get(attribute.name)
        index = attribute.states.index(value)
        if attribute.one_field_per_class:
            for k, field in enumerate(attribute.fields):
                codes[field] = 2 if k == index else 1
        else:
            codes[attribute.fields[0]] = index + 1
    return codes


def attribute_entropies(identities: Sequence[Identity]) -> dict[str, float]:
    """Empirical entropy (bits) of each attribute's values across identities."""
    out = {}
    for name in MARKET1501.names:
        counts = Counter(identity.get(name) for identity in identities)
        p = np.array(list(counts.values()), dtype=float) / len(identities)
        out[name] = _entropy_bits(p)
    return out
