"""The built-in ``rules`` phrase extractor: a compact rule-based noun-phrase chunker.

Why rules: no tagger (spaCy, NLTK) is available offline, and captions of pedestrians are a narrow
register, so a small lexicon of *closed-class* words (determiners, verbs, prepositions, colours,
common adjectives) plus suffix rules tags every token with one letter, and one compiled regular
expression over the tag string finds the noun phrases. There is no list of garments: any content
word that is not a known function word, colour or adjective is a noun, so "a green poncho" is a
phrase even though "poncho" is in no table. Phrases whose head is a person or scene noun ("the
man", "the street") are dropped through a small exclusion list. See ``docs/phrases.md``.

Tags: ``D`` determiner/possessive/number, ``Q`` "pair"/"pairs", ``O`` "of", ``C`` colour, ``J``
adjective, ``R`` degree adverb, ``G`` -ing word (a modifier inside a phrase, else a verb),
``N`` noun, ``M`` noun that may modify another ("sleeve", "neck"), ``W`` "with", ``K`` and/or,
``,``/``.`` punctuation, ``P`` subject pronoun, ``B`` copula, ``V`` anything else (verbs,
pronouns, prepositions).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from reid_explain.hookspecs import hookimpl
from reid_explain.plugin_api.phrases import PART_NOUNS, PartPhrase, PhraseExtractor, part_of

_TOKEN = re.compile(r"[^\W_]+(?:['’\-][^\W_]+)*|\S")  # words (inner - and '), other chars

# a phrase: optional "a pair of" and determiners, then modifiers and nouns ending in a noun. A noun
# followed by a colour/adjective ends the phrase ("a white top black pants" is two phrases);
# "and" joins only adjectives/colours ("black and white shoes").
_NP = re.compile(r"(?:D*QO)?D*(?:[RJCM]|N(?![JC])|(?<=[JC])K(?=R*[JC]))*[NM]")
# an -ing word after a determiner/adjective and before a noun is a modifier ("white running
# shoes"), an apparel gerund (tag g) is one before any noun ("wearing running shoes");
# everywhere else it is a verb ("a man wearing ...").
_ING_MODIFIER = re.compile(r"(?<=[DJCROW])G(?=[NMCJGg])|g(?=[NMCJGg])")
_TO_VERB = str.maketrans({"G": "V", "g": "V"})
_NOT_A_NOUN = re.compile(r"(?<=P)N|(?<=B)N(?=[,.K]|$)")

_WORDS: dict[str, str] = {
    **dict.fromkeys((
        "a", "an", "the", "this", "that", "these", "those", "some", "any", "another", "other",
        "his", "her", "their", "its", "my", "your", "our", "one", "two", "three", "four",
        "several", "many", "few", "both", "each", "every", "all", "no", "neither",
        "much", "more", "most",
    ), "D"),
    **dict.fromkeys((
        # -ing words that modify apparel nouns wherever they stand ("wearing running shoes")
        "running", "walking", "hiking", "matching", "riding", "training", "climbing",
        "shopping", "jogging", "cycling", "skating", "swimming", "bowling", "fishing",
        "sleeping", "sporting", "tracking", "basketball", "hunting", "working",
    ), "g"),
    "pair": "Q", "pairs": "Q", "of": "O", "with": "W", "and": "K", "or": "K", "&": "K",
    "/": "K", "nor": "K",
    **dict.fromkeys((
        "black", "white", "red", "blue", "green", "yellow", "orange", "purple", "pink",
        "brown", "gray", "grey", "beige", "navy", "tan", "khaki", "maroon", "violet", "gold",
        "golden", "silver", "cream", "ivory", "turquoise", "teal", "cyan", "magenta",
        "burgundy", "olive", "lavender", "indigo", "crimson", "coral", "charcoal", "peach",
        "mint", "lilac", "aqua", "blonde", "blond", "auburn", "brunette", "dark", "light",
        "pale", "bright", "deep", "colorful", "colourful", "multicolor", "multicolour",
        "neon", "pastel", "rainbow", "fuchsia", "mauve", "salmon", "rust", "camel",
    ), "C"),
    **dict.fromkeys((
        "long", "short", "tall", "small", "big", "large", "little", "tiny", "huge", "loose",
        "tight", "baggy", "skinny", "slim", "thin", "thick", "fat", "heavy", "young", "old",
        "older", "elderly", "middle", "new", "casual", "formal", "plain", "solid", "bald",
        "curly", "straight", "wavy", "messy", "neat", "medium", "mid", "full", "half", "high",
        "low", "open", "simple", "fancy", "cute", "pretty", "nice", "sleeveless", "puffy",
        "fluffy", "furry", "shiny", "sporty", "fitted", "warm", "left", "right", "front",
        "rear", "upper", "lower", "main", "single", "double", "round", "square", "flat",
        "wide", "narrow", "thigh", "length", "knit", "woolen", "woollen", "wooden", "sheer",
        "bare", "teenage", "asian", "western", "chinese", "fashionable", "stylish", "usual",
        "normal", "regular", "dressy", "athletic", "sports", "grown", "mini", "maxi", "midi",
        "leather", "denim", "cotton", "wool", "silk", "suede", "nylon", "canvas", "lace",
        "floral", "graphic", "polka", "checkered", "plaid", "tartan", "camouflage", "camo",
        "vertical", "horizontal", "diagonal", "zip", "crew", "v", "ankle", "knee",
    ), "J"),
    **dict.fromkeys(("very", "slightly", "quite", "rather", "fairly", "really", "extremely",
                     "somewhat", "super", "too", "mostly", "mainly", "predominantly",
                     "almost", "partly", "completely", "entirely"), "R"),
    **dict.fromkeys(("sleeve", "sleeves", "neck", "collar", "heel", "strap", "button",
                     "zipper", "hood", "shoulder", "waist"), "M"),
    **dict.fromkeys((
        # nouns that end in -ing and -ed, which the suffix rules would get wrong
        "clothing", "writing", "lettering", "printing", "padding", "trimming", "lining",
        "earring", "earrings", "stocking", "stockings", "legging", "leggings", "string",
        "ring", "rings", "sling", "building", "painting", "drawing", "bedding", "wing",
        "pudding", "bed", "shed", "sled", "ing", "embroidering",
    ), "N"),
    **dict.fromkeys((
        # verbs, auxiliaries, pronouns, prepositions, conjunctions, negators
        "is", "are", "was", "were", "be", "been", "being", "am", "has", "have", "had", "do",
        "does", "did", "can", "could", "will", "would", "should", "may", "might", "must",
        "wears", "wear", "wore", "worn", "carries", "carry", "holds", "hold", "held",
        "walks", "walk", "dressed", "stands", "stand", "sits", "sit", "rides", "ride", "rode",
        "pulls", "pull", "pushes", "push", "drags", "drag", "uses", "use", "goes", "go",
        "went", "gone", "moves", "move", "crosses", "cross", "comes", "come", "came", "looks",
        "look", "seems", "seem", "appears", "appear", "seen", "see", "shows", "show",
        "hangs", "hang", "hung", "slung", "draped", "tied", "tucked", "rolled", "paired",
        "matched", "features", "covers", "covered", "leads", "talks", "talk",
        "stepping", "steps", "runs", "run", "ran", "heads", "reaches", "makes", "gets",
        "got", "put", "puts", "keeps", "kept", "bears", "bring", "brings", "brought",
        "attached", "accompanied", "finished", "completed", "topped", "dressing",
        "he", "she", "it", "they", "him", "them", "i", "we", "you", "who", "whom", "whose",
        "which", "what", "there", "here", "someone", "somebody", "something", "anything",
        "nothing", "everything", "anyone", "none", "himself", "herself", "themselves",
        "in", "on", "over", "at", "around", "under", "behind", "by", "from", "across",
        "near", "to", "into", "onto", "through", "along", "down", "up", "off", "out",
        "above", "below", "beside", "besides", "between", "against", "toward", "towards",
        "about", "like", "for", "without", "within", "inside", "outside", "underneath",
        "beneath", "atop", "upon", "past", "via", "while", "as", "when", "then", "also",
        "but", "so", "because", "if", "than", "just", "only", "not", "n't", "yet", "still",
        "even", "well", "away", "back", "forward", "ahead", "together", "alone", "either",
        "whether", "although", "though", "where", "how", "why", "appearing", "wearing",
    ), "V"),
    # subject pronouns: an unknown word right after one is a verb ("she strolls")
    **dict.fromkeys(("he", "she", "they", "it", "i", "we", "who"), "P"),
    # copulas: an unknown word right after one that ends the clause is a predicate ("is bulky")
    **dict.fromkeys(("is", "are", "was", "were", "be", "been", "seems", "seem", "looks",
                     "appears", "isn't", "aren't"), "B"),
}

_ADJ_SUFFIXES = ("ish", "ful", "ous", "less", "ive", "able", "ible", "ed")
_ADV_SUFFIX = "ly"
_NEGATORS = frozenset(("no", "not", "without", "never", "nothing", "none", "isn't", "doesn't",
                       "don't", "aren't", "wasn't", "didn't", "isn’t", "doesn’t", "don’t"))

#: heads that name the person or the scene, not a part: such phrases are dropped.
EXCLUDED_HEADS: frozenset[str] = frozenset((
    "man", "men", "woman", "women", "person", "people", "persons", "pedestrian",
    "pedestrians", "guy", "guys", "gentleman", "gentlemen", "lady", "ladies", "girl", "girls",
    "boy", "boys", "kid", "kids", "child", "children", "teenager", "teen", "adult", "adults",
    "male", "female", "individual", "student", "students", "baby", "toddler", "infant",
    "youth", "worker", "officer", "mother", "father", "friend", "friends", "couple", "crowd",
    "subject", "figure", "human", "someone", "somebody", "customer", "passerby", "walker",
    "stranger", "mom", "dad", "grandma", "grandpa", "grandmother", "grandfather", "senior",
    "daughter", "son", "husband", "wife", "boyfriend", "girlfriend", "partner", "companion",
    "dog", "dogs", "cat", "pet", "puppy",
    "street", "road", "sidewalk", "pavement", "ground", "floor", "path", "crosswalk",
    "building", "wall", "door", "background", "area", "scene", "picture", "image", "photo",
    "photograph", "frame", "camera", "view", "shot", "video", "day", "time", "way",
    "direction", "distance", "corner", "hallway", "campus", "park", "grass", "tree", "trees",
    "car", "cars", "traffic", "stairs", "steps", "side", "middle", "bottom", "color",
    "colour", "colors", "colours", "style", "type", "kind", "sort", "lot", "lots", "bit",
    "rest", "part", "front", "appearance", "age", "year", "years", "twenties", "thirties",
    "forties", "fifties", "sixties", "shade", "shades", "tone", "item", "items", "thing",
    "things", "number", "walkway", "entrance", "store", "shop", "lane", "yard", "crossing",
    "intersection",
))

#: body parts named as a location ("on her back", "in his left hand"): dropped unless described
#: by something other than a determiner or a side ("a bald head" stays).
LOCATION_HEADS: frozenset[str] = frozenset((
    "back", "shoulder", "shoulders", "hand", "hands", "arm", "arms", "waist", "hip", "hips",
    "chest", "neck", "wrist", "wrists", "elbow", "elbows", "body", "leg", "legs", "foot",
    "feet", "head", "face", "knee", "knees", "ankle", "ankles", "thigh", "thighs", "torso",
    "side", "shin", "shins", "calf", "calves", "finger", "fingers", "lap", "belly", "ear",
    "ears", "eye", "eyes", "mouth", "nose", "forehead", "cheek", "cheeks", "lips", "chin",
    "skin", "palm", "palms", "armpit",
))
# bare nouns that are idioms, not parts, after these words ("white on top", "on foot")
_IDIOMS = frozenset((("on", "top"), ("at", "top"), ("on", "foot"), ("by", "hand"),
                     ("in", "front"), ("on", "front"), ("in", "hand")))
_SIDE_WORDS = frozenset(("left", "right", "both", "other", "one", "two", "upper", "lower"))

#: a ``with`` phrase whose head is a garment detail belongs to the phrase before it ("a white
#: shirt with short sleeves", "a top with black stripes"); any other ``with`` phrase stands alone.
DETAIL_HEADS: frozenset[str] = frozenset((
    "sleeve", "sleeves", "collar", "collars", "stripe", "stripes", "pattern", "patterns",
    "print", "prints", "logo", "logos", "letter", "letters", "word", "words", "writing",
    "lettering", "design", "designs", "hood", "hoods", "button", "buttons", "zipper",
    "zippers", "zip", "pocket", "pockets", "dot", "dots", "spot", "spots", "check", "checks",
    "flower", "flowers", "graphic", "graphics", "trim", "trims", "lining", "lace", "laces",
    "strap", "straps", "heel", "heels", "sole", "soles", "picture", "pictures", "image",
    "images", "text", "character", "characters", "cartoon", "cartoons", "emblem", "emblems",
    "badge", "badges", "plaid", "squares", "polka", "decoration", "decorations", "fur",
    "belt", "bow", "ruffles", "frills", "neckline", "v-neck", "cuffs", "hem", "panel",
    "panels", "accents", "accent", "details", "detail", "trimming", "band", "bands",
    "number", "numbers", "brim", "visor", "wheels", "handle", "handles",
))


def _classify(word: str) -> str:
    """The tag of one lower-cased token (cached by the caller)."""
    tag = _WORDS.get(word)
    if tag is not None:
        return tag
    if not word[0].isalnum():
        return "," if word in ",;:" else "K" if word in "&/+" else "."
    if word[0].isdigit():
        return "D"
    if "-" in word:
        pieces = word.split("-")
        if all(_WORDS.get(p) in ("C", "K") or p.endswith("ish") for p in pieces):
            return "C"  # "light-blue", "black-and-white", "bluish-green"
        last = _classify(pieces[-1])
        return "J" if last in ("J", "C") or pieces[-1] == "length" else \
            "M" if last == "M" else "N"
    if "'" in word or "’" in word:
        return "V"  # "the man's", "isn't": a possessor is not part of the phrase that follows
    if word.endswith("ing") and len(word) > 4:
        return "G"
    if word.endswith(_ADV_SUFFIX) and len(word) > 4 and not word.endswith(("ally", "elly")):
        return "R"
    if len(word) > 4 and word.endswith(_ADJ_SUFFIXES):
        return "J"
    return "N"


class RulePhraseExtractor(PhraseExtractor):
    """Rule-based noun-phrase chunker for pedestrian captions (no model, no closed noun list)."""

    name = "rules"
    description = ("Rule-based part-phrase chunker: closed-class lexicon + suffix rules, one "
                   "regex over token tags; open vocabulary of head nouns")

    def __init__(self, part_nouns: Mapping[str, str] | None = None,
                 excluded_heads: frozenset[str] = EXCLUDED_HEADS,
                 detail_heads: frozenset[str] = DETAIL_HEADS) -> None:
        self.part_nouns = {**PART_NOUNS, **(part_nouns or {})}
        self.excluded_heads = excluded_heads
        self.detail_heads = detail_heads
        self._tags: dict[str, str] = {}

    def _tag(self, word: str) -> str:
        tag = self._tags.get(word)
        if tag is None:
            if len(self._tags) > 200_000:
                self._tags.clear()
            tag = self._tags[word] = _classify(word)
        return tag

    def extract(self, caption: str) -> list[PartPhrase]:
        """Chunk, then drop person/scene/location/negated phrases and attach ``with`` details."""
        tokens = _TOKEN.findall(caption)
        if not tokens:
            return []
        lower = [t.lower() for t in tokens]
        tags = "".join([self._tag(w) for w in lower])
        tags = _NOT_A_NOUN.sub("V", _ING_MODIFIER.sub("J", tags).translate(_TO_VERB))
        spans = self._token_spans(caption, tokens)
        chunks = [(m.start(), m.end()) for m in _NP.finditer(tags)]
        phrases: list[PartPhrase] = []
        used = -1  # last token consumed by an attachment
        for k, (i, j) in enumerate(chunks):
            if i < used or not self._keep(lower, tags, i, j):
                continue
            end = j
            # attach "with <detail>" (and "and <detail>" after it) to this phrase
            n = k + 1
            joiner = "W"
            while (n < len(chunks) and end < len(tags) and tags[end] == joiner
                   and chunks[n][0] == end + 1
                   and lower[chunks[n][1] - 1] in self.detail_heads):
                end = chunks[n][1]
                n += 1
                joiner = "K"
            used = end
            head = tokens[j - 1]
            mods = [w for w, t in zip(lower[i:j - 1], tags[i:j - 1], strict=True)
                    if t not in "DQO"]
            start, stop = spans[i][0], spans[end - 1][1]
            part = part_of(head, mods, self.part_nouns, lower[j:end])
            phrases.append(PartPhrase(start, stop, caption[start:stop], head, part))
        return phrases

    def _keep(self, lower: list[str], tags: str, i: int, j: int) -> bool:
        head = lower[j - 1]
        if head in self.excluded_heads:
            return False
        if head in LOCATION_HEADS and all(t == "D" or w in _SIDE_WORDS
                                          for w, t in zip(lower[i:j - 1], tags[i:j - 1],
                                                          strict=True)):
            return False
        if lower[i] in _NEGATORS:
            return False
        if j - i == 1 and i and (lower[i - 1], head) in _IDIOMS:
            return False
        # a negator among the function words just before ("is not carrying a bag")
        for b in range(i - 1, max(i - 4, -1), -1):
            if lower[b] in _NEGATORS:
                return False
            if tags[b] not in "VPB":
                break
        return True

    @staticmethod
    def _token_spans(caption: str, tokens: list[str]) -> list[tuple[int, int]]:
        """Character spans of ``tokens`` (which ``_TOKEN`` found in order in ``caption``)."""
        spans = []
        pos = 0
        find = caption.find
        for t in tokens:
            s = find(t, pos)
            pos = s + len(t)
            spans.append((s, pos))
        return spans


@hookimpl
def register_phrase_extractors(register: Callable[[type], None]) -> None:
    register(RulePhraseExtractor)
