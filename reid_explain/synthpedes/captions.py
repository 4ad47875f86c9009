"""SynthPedes captions: CUHK-PEDES-style sentences whose part phrases carry character spans.

Why spans: grounding metrics need to know which words name which body part, so each part phrase
("a red short-sleeved shirt", "black backpack") is recorded as ``(start, end)`` into the caption
with its part name (a key of the image's masks) and the attributes it expresses.

Rule: a caption mentions a part only if the part is *visible in that image* (at least
``min_pixels`` mask pixels), as an annotator describing the picture would; so every span points
at a non-empty mask. A backpack seen from the front (hidden behind the torso) is not mentioned.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from reid_explain.synthpedes.identities import Identity


@dataclass(frozen=True)
class Phrase:
    """A part phrase inside a caption: ``caption[start:end] == text``."""

    start: int
    end: int
    text: str
    part: str
    attributes: tuple[str, ...]

    def to_json(self) -> dict:
        return {"start": self.start, "end": self.end, "text": self.text, "part": self.part,
                "attributes": list(self.attributes)}


@dataclass(frozen=True)
class Caption:
    text: str
    phrases: tuple[Phrase, ...]

    def to_json(self) -> dict:
        return {"text": self.text, "phrases": [p.to_json() for p in self.phrases]}


class _Builder:
    """Appends text pieces and remembers where each phrase landed."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.length = 0
        self.phrases: list[Phrase] = []

    def text(self, s: str) -> None:
        self.parts.append(s)
        self.length += len(s)

    def phrase(self, item: _Item) -> None:
        self.phrases.append(Phrase(self.length, self.length + len(item.text), item.text,
                                   item.part, item.attributes))
        self.text(item.text)

    def build(self) -> Caption:
        return Caption("".join(self.parts), tuple(self.phrases))


@dataclass(frozen=True)
class _Item:
    text: str
    part: str
    attributes: tuple[str, ...]


def _pick(rng: np.random.Generator, options: Sequence[str]) -> str:
    return str(options[int(rng.integers(len(options)))])


def _article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


_PATTERN_WORDS = {"hstripes": ("striped",), "vstripes": ("striped", "pinstriped"),
                  "checks": ("checked", "plaid")}


def _upper(person: Identity, rng: np.random.Generator) -> str:
    colour = person.get("upper_color")
    long = person.get("sleeve") == "long"
    female = person.get("gender") == "female"
    d = person.detail
    pattern = ""
    if d.pattern != "plain" and d.pattern_contrast >= 0.12 and rng.random() < 0.6:
        pattern = _pick(rng, _PATTERN_WORDS[d.pattern]) + " "
    nouns = ["shirt", "top"] + (["blouse"] if female else [])
    style = rng.integers(3)
    if style == 0:
        adj = _pick(rng, ("long-sleeved", "long sleeve") if long else
                    ("short-sleeved", "short sleeve"))
        return _article(f"{colour} {pattern}{adj} {_pick(rng, nouns)}")
    if style == 1:
        noun = _pick(rng, ("jacket", "sweater", "coat", "long-sleeved top") if long else
                     ("T-shirt", "tee", "short-sleeved top"))
        return _article(f"{colour} {pattern}{noun}")
    sleeves = "long sleeves" if long else "short sleeves"
    return _article(f"{colour} {pattern}{_pick(rng, nouns)} with {sleeves}")


def _lower(person: Identity, rng: np.random.Generator) -> str:
    colour = person.get("lower_color")
    short = person.get("lower_length") == "short"
    if person.get("clothes") == "pants":
        if short:
            return _pick(rng, (f"{colour} shorts", f"a pair of {colour} shorts",
                               f"short {colour} pants"))
        noun = _pick(rng, ("trousers", "pants", "jeans", "slacks"))
        return _pick(rng, (f"{colour} {noun}", f"a pair of {colour} {noun}",
                           f"long {colour} {noun}"))
    if short:
        return _pick(rng, (f"a short {colour} skirt", f"a {colour} miniskirt",
                           f"a short {colour} dress"))
    return _pick(rng, (f"a long {colour} skirt", f"a long {colour} dress",
                       f"a {colour} ankle-length dress"))


def _items(person: Identity, visible: Mapping[str, bool],
           rng: np.random.Generator) -> dict[str, _Item]:
    """The phrases this image supports, keyed by role."""
    d = person.detail
    items: dict[str, _Item] = {}
    if visible["upper_body"]:
        items["upper"] = _Item(_upper(person, rng), "upper_body", ("upper_color", "sleeve"))
    if visible["lower_body"]:
        items["lower"] = _Item(_lower(person, rng), "lower_body",
                               ("lower_color", "lower_length", "clothes"))
    if visible["shoes"]:
        shoe = _pick(rng, ("shoes", "sneakers", "boots", "trainers"))
        items["shoes"] = _Item(_pick(rng, (f"{d.shoe_colour} {shoe}",
                                           f"a pair of {d.shoe_colour} {shoe}")), "shoes", ())
    if visible["hair"]:
        colour = "gray" if person.get("age") == "old" else d.hair_colour
        length = person.get("hair")
        items["hair"] = _Item(_pick(rng, (f"{length} {colour} hair", f"{length} hair")), "hair",
                              ("hair",))
    if person.get("hat") == "yes" and visible["hat"]:
        items["hat"] = _Item(_article(f"{d.hat_colour} {_pick(rng, ('hat', 'cap'))}"), "hat",
                             ("hat",))
    if person.get("backpack") == "yes" and visible["backpack"]:
        items["backpack"] = _Item(
            _article(f"{d.backpack_colour} {_pick(rng, ('backpack', 'rucksack', 'school bag'))}"),
            "backpack", ("backpack",))
    if person.get("bag") == "yes" and visible["bag"]:
        items["bag"] = _Item(
            _article(f"{d.bag_colour} {_pick(rng, ('shoulder bag', 'bag', 'messenger bag'))}"),
            "bag", ("bag",))
    if person.get("handbag") == "yes" and visible["handbag"]:
        items["handbag"] = _Item(
            _article(f"{d.handbag_colour} {_pick(rng, ('handbag', 'purse', 'hand bag'))}"),
            "handbag", ("handbag",))
    return items


def _subject(person: Identity, rng: np.random.Generator) -> tuple[str, str, str]:
    """(noun phrase without article, pronoun, possessive)."""
    female = person.get("gender") == "female"
    age = person.get("age")
    nouns = {
        "young": ("girl", "little girl") if female else ("boy", "little boy"),
        "teenager": ("teenage girl", "young woman", "girl") if female else
        ("teenage boy", "young man", "boy"),
        "adult": ("woman", "lady") if female else ("man", "guy", "gentleman"),
        "old": ("old woman", "elderly woman", "older lady") if female else
        ("old man", "elderly man", "older man"),
    }[age]
    noun = _pick(rng, nouns) if rng.random() < 0.85 else _pick(rng, ("person", "pedestrian"))
    return noun, ("She" if female else "He"), ("her" if female else "his")


def _join(b: _Builder, items: Sequence[_Item]) -> None:
    """'x', 'x and y', 'x, y and z' with spans."""
    for i, item in enumerate(items):
        if i:
            b.text(" and " if i == len(items) - 1 else ", ")
        b.phrase(item)


_CARRY = {
    "backpack": (("is carrying ", " on {poss} back"), ("carries ", ""),
                 ("has ", " on {poss} back")),
    "bag": (("carries ", " over {poss} shoulder"), ("is carrying ", ""), ("has ", "")),
    "handbag": (("holds ", " in {poss} hand"), ("is carrying ", ""), ("carries ", "")),
    "hat": (("is wearing ", ""), ("wears ", " on {poss} head"), ("has on ", "")),
}


def make_caption(person: Identity, visible: Mapping[str, bool],
                 rng: np.random.Generator) -> Caption:
    """One caption of ``person`` mentioning only the visible parts."""
    items = _items(person, visible, rng)
    noun, pron, poss = _subject(person, rng)
    the = _pick(rng, ("The", "A", "This")) if noun[0] not in "aeiou" else _pick(rng, ("The", "An"))
    b = _Builder()
    clothes = [items[k] for k in ("upper", "lower") if k in items]
    if "shoes" in items and rng.random() < 0.6:
        clothes.append(items["shoes"])
    if len(clothes) > 1 and rng.random() < 0.3:
        clothes[0], clothes[1] = clothes[1], clothes[0]
    hair = items.get("hair") if rng.random() < 0.6 else None
    extras = [k for k in ("hat", "backpack", "bag", "handbag") if k in items]
    order = list(rng.permutation(len(extras)))
    extras = [extras[i] for i in order]
    style = int(rng.integers(3))
    if style == 0 or not clothes:
        b.text(f"{the} {noun} ")
        if clothes:
            b.text(_pick(rng, ("is wearing ", "wears ", "is dressed in ", "has on ")))
            _join(b, clothes)
        else:
            b.text("is walking")
        b.text(". ")
        if hair is not None:
            b.text(f"{pron} has ")
            b.phrase(hair)
            b.text(". ")
    else:
        b.text(f"{the} {noun} ")
        if hair is not None:
            b.text("with ")
            b.phrase(hair)
            b.text(" ")
        b.text(_pick(rng, ("in ", "wearing ", "dressed in ")))
        _join(b, clothes)
        b.text(_pick(rng, (". ", " is walking. ", " walks along the street. ")))
    for key in extras:
        verb, tail = _CARRY[key][int(rng.integers(len(_CARRY[key])))]
        b.text(f"{pron} {verb}")
        b.phrase(items[key])
        b.text(tail.format(poss=poss) + ". ")
    caption = b.build()
    text = caption.text.rstrip()
    return Caption(text, caption.phrases)


def make_captions(person: Identity, part_pixels: Mapping[str, int], rng: np.random.Generator,
                  n: int = 2, min_pixels: int = 8) -> list[Caption]:
    """``n`` captions, different where the phrasing space allows, for one image."""
    visible = {part: count >= min_pixels for part, count in part_pixels.items()}
    captions: list[Caption] = []
    seen: set[str] = set()
    for _ in range(n):
        for _attempt in range(8):
            caption = make_caption(person, visible, rng)
            if caption.text not in seen:
                break
        seen.add(caption.text)
        captions.append(caption)
    return captions
