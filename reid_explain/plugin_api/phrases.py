"""Part phrases of a caption: the contract every phrase extractor meets, and the lookup by name.

Why: PPIM supervision and ``explainer.ground(image, caption)`` need, for a free-text caption, the
phrases that describe a body part, garment or carried object ("a light-blue short-sleeved
T-shirt", "white sneakers") with exact character spans, so that text-token features can be pooled
over each phrase. How the phrases are found is a plugin (hook ``register_phrase_extractors``):
the built-in ``rules`` extractor is a fast rule-based chunker; a third party may register a
parser-backed one under its own name.

The head noun -> part table below is *soft*: extractors find phrases by syntax and only then ask
:func:`part_of` which SynthPedes part (``reid_explain.data.schema.PARTS``) the head names; an
unknown noun gives ``None``, never a dropped phrase.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import PluginError
from . import manager as plugin_manager

__all__ = [
    "MODIFIER_PARTS", "PART_NOUNS", "PartPhrase", "PhraseExtractor", "extract_phrases",
    "get_extractor", "match_counts", "part_of", "span_iou",
]


@dataclass(frozen=True, slots=True)
class PartPhrase:
    """One part phrase inside a caption: ``caption[start:end] == text``.

    ``head`` is the head noun as written ("T-shirt"); ``part`` the SynthPedes part it names
    (``upper_body``, ``lower_body``, ``shoes``, ``hair``, ``hat``, ``backpack``, ``bag``,
    ``handbag``, ``head``) or ``None`` when the head noun is not in the table.
    """

    start: int
    end: int
    text: str
    head: str
    part: str | None

    def to_json(self) -> dict[str, Any]:
        return {"start": self.start, "end": self.end, "text": self.text, "head": self.head,
                "part": self.part}


#: head noun (lower case, singular or as commonly written) -> part. Extend freely; a phrase whose
#: head is missing here is still extracted, with ``part=None``.
PART_NOUNS: dict[str, str] = {
    **dict.fromkeys((
        "shirt", "t-shirt", "tshirt", "tee", "top", "blouse", "jacket", "coat", "sweater",
        "hoodie", "hoody", "sweatshirt", "jumper", "cardigan", "vest", "tank", "tanktop",
        "tank-top", "jersey", "polo", "blazer", "parka", "overcoat", "windbreaker", "pullover",
        "tunic", "suit", "tuxedo", "uniform", "sleeve", "collar", "tie", "scarf", "shawl",
        "fleece", "anorak", "raincoat", "trenchcoat", "camisole", "bodysuit", "outerwear",
    ), "upper_body"),
    **dict.fromkeys((
        "pants", "trousers", "jeans", "slacks", "shorts", "skirt", "miniskirt", "dress",
        "leggings", "tights", "capris", "sweatpants", "joggers", "khakis", "chinos",
        "culottes", "stockings", "pantyhose", "jeggings", "bottoms", "overalls", "trouser",
        "pant", "skort", "gown",
    ), "lower_body"),
    **dict.fromkeys((
        "shoe", "shoes", "sneaker", "boot", "trainer", "sandal", "heel", "slipper",
        "loafer", "flat", "flip-flop", "flipflop", "flip flop", "footwear", "sock",
        "moccasin", "pump", "stiletto", "wedge", "runner", "kicks",
    ), "shoes"),
    **dict.fromkeys(("hair", "ponytail", "bun", "braid", "bangs", "pigtail", "hairstyle",
                     "haircut", "fringe", "curls", "dreadlocks", "pony tail"), "hair"),
    **dict.fromkeys(("hat", "cap", "beanie", "helmet", "hood", "beret", "headband",
                     "headscarf", "bandana", "visor", "fedora"), "hat"),
    **dict.fromkeys(("backpack", "rucksack", "knapsack", "schoolbag", "school bag",
                     "book bag", "bookbag"), "backpack"),
    **dict.fromkeys(("bag", "shoulder bag", "messenger bag", "satchel", "tote", "tote bag",
                     "crossbody bag", "cross-body bag", "sling bag", "duffel bag",
                     "duffle bag", "gym bag", "bags"), "bag"),
    **dict.fromkeys(("handbag", "purse", "hand bag", "clutch", "pocketbook", "briefcase",
                     "wallet", "shopping bag", "plastic bag", "paper bag"), "handbag"),
    **dict.fromkeys(("head", "face", "glasses", "sunglasses", "spectacles", "eyeglasses",
                     "mask", "beard", "mustache", "moustache", "goatee", "earring", "earphones",
                     "headphones"), "head"),
}

#: a modifier that betrays the part of an unknown head noun ("a sleeveless poncho" is upper
#: body); consulted only when the head is not in :data:`PART_NOUNS`.
MODIFIER_PARTS: dict[str, str] = {
    **dict.fromkeys(("sleeved", "sleeve", "sleeves", "sleeveless", "short-sleeved",
                     "long-sleeved", "short-sleeve", "long-sleeve", "collared", "hooded",
                     "v-neck", "zip-up", "button-up", "button-down", "turtleneck",
                     "crew-neck"), "upper_body"),
    **dict.fromkeys(("knee-length", "ankle-length", "floor-length", "mid-length",
                     "high-waisted", "pleated", "cropped", "flared", "wide-leg"),
                    "lower_body"),
    **dict.fromkeys(("high-heeled", "lace-up", "platform", "running", "tennis"), "shoes"),
}


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if len(word) > 3 and (word.endswith(("ses", "xes", "zes", "ches", "shes"))):
        return word[:-2]
    if word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def part_of(head: str, modifiers: Iterable[str] = (),
            table: Mapping[str, str] | None = None, details: Iterable[str] = ()) -> str | None:
    """The part a head noun names, or ``None``: compound ("shoulder bag"), word, singular, cues.

    ``modifiers`` are the words before the head in its phrase; the last of them forms the
    compound key, and any of them, or of the attached ``details`` ("with short sleeves"), may be
    a :data:`MODIFIER_PARTS` cue for an unknown head.
    """
    table = PART_NOUNS if table is None else table
    mods = [m.lower() for m in modifiers]
    word = head.lower()
    keys = [word, _singular(word)]
    if mods:
        keys = [f"{mods[-1]} {k}" for k in keys] + keys
    for key in keys:
        part = table.get(key)
        if part is not None:
            return part
    for mod in [*reversed(mods), *(d.lower() for d in details)]:
        part = MODIFIER_PARTS.get(mod)
        if part is not None:
            return part
    return None


class PhraseExtractor:
    """Finds part phrases in captions; subclass, set ``name``, implement :meth:`extract`.

    Register the subclass through the ``register_phrase_extractors`` hook; it is then used by
    ``extract_phrases(caption, extractor="name")`` and by PPIM's ``phrase_extractor="name"``.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def extract(self, caption: str) -> list[PartPhrase]:
        """The part phrases of ``caption`` in text order; ``caption[start:end] == text``."""
        raise NotImplementedError

    def extract_many(self, captions: Iterable[str]) -> list[list[PartPhrase]]:
        """One list per caption (override when batching helps, e.g. a neural parser)."""
        return [self.extract(caption) for caption in captions]


_instances: dict[type, PhraseExtractor] = {}


def get_extractor(name: str = "rules") -> PhraseExtractor:
    """The registered extractor ``name`` (one shared instance per class).

    An unknown name is the plugin manager's ``UnknownPluginError`` listing the known ones.
    """
    entry = plugin_manager.get("phrase_extractors", name)
    cls = entry.obj
    if not (isinstance(cls, type) and issubclass(cls, PhraseExtractor)):
        raise PluginError(f"phrase extractor {name!r} from plugin {entry.plugin!r} is "
                          f"{cls!r}, not a reid_explain.plugin_api.phrases.PhraseExtractor "
                          "subclass")
    instance = _instances.get(cls)
    if instance is None:
        try:
            instance = _instances[cls] = cls()
        except Exception as exc:
            raise PluginError(f"phrase extractor {name!r} from plugin {entry.plugin!r} failed "
                              f"to initialise: {type(exc).__name__}: {exc}") from exc
    return instance


def extract_phrases(caption: str,
                    extractor: str | PhraseExtractor = "rules") -> list[PartPhrase]:
    """The part phrases of ``caption`` found by ``extractor`` (a registered name or an instance).

    The result is checked against the contract (``caption[start:end] == text``), so a plugin's
    span bug surfaces here as a ``PluginError`` naming it, not as a silently shifted phrase.
    """
    ex = get_extractor(extractor) if isinstance(extractor, str) else extractor
    try:
        phrases = ex.extract(caption)
    except Exception as exc:
        raise PluginError(f"phrase extractor {ex.name!r} raised on caption {caption!r}: "
                          f"{type(exc).__name__}: {exc}") from exc
    for p in phrases:
        if not isinstance(p, PartPhrase) or caption[p.start:p.end] != p.text:
            raise PluginError(f"phrase extractor {ex.name!r} returned {p!r}, whose span does "
                              f"not match caption {caption!r}")
    return phrases


def normalise_phrase(text: str) -> str:
    """A phrase's text with case and whitespace folded: what counts as "the same phrase"."""
    return " ".join(str(text).lower().split())


def span_iou(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Intersection over union of two character spans ``(start, end)``."""
    inter = min(a[1], b[1]) - max(a[0], b[0])
    if inter <= 0:
        return 0.0
    return inter / (max(a[1], b[1]) - min(a[0], b[0]))


def match_counts(gold: Iterable[Any], pred: Iterable[Any], min_iou: float = 1.0,
                 same_part: bool = False) -> tuple[int, int, int]:
    """``(matched, n_pred, n_gold)`` under a one-to-one greedy span matching.

    Why here: every extractor is judged the same way against gold spans (SynthPedes ``Phrase``
    or any object with ``start``, ``end``, ``part``). ``min_iou=1.0`` is exact span match;
    ``same_part`` also requires equal ``part``. Pairs are taken best IoU first.
    """
    gold, pred = list(gold), list(pred)
    pairs = []
    for gi, g in enumerate(gold):
        for pi, p in enumerate(pred):
            if same_part and g.part != p.part:
                continue
            iou = span_iou((g.start, g.end), (p.start, p.end))
            if iou >= min_iou and iou > 0.0:
                pairs.append((-iou, gi, pi))
    pairs.sort()
    taken_g: set[int] = set()
    taken_p: set[int] = set()
    for _, gi, pi in pairs:
        if gi not in taken_g and pi not in taken_p:
            taken_g.add(gi)
            taken_p.add(pi)
    return len(taken_g), len(pred), len(gold)
