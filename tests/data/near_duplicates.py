"""When two prompts ask the same thing: exact after normalising, or a lexical paraphrase of each other.

The measure works on content words: lower-cased, punctuation dropped, stop words and framing words ("tell",
"give", "write", "explain the difference between", "in simple terms") removed, and a light suffix stripping so that
"cooking"/"cook" and "photos"/"photo" meet. Two prompts match when
- their normalised texts are equal, or
- the Jaccard similarity of their content-word sets is >= JACCARD (reworded, reordered, a word or two swapped), or
- the smaller content-word set, of at least CONTAINED_MIN words, lies >= CONTAINMENT inside the larger one (the
  same request padded with context: "as a beginner, can you please tell me ...").
Character-level ratios (difflib) are not used: short templated questions ("What's the difference between X and
Y?") score 0.75-0.80 on them while asking different things. A rewrite with different words throughout (synonyms
for every noun) is out of reach of any lexical measure; the thresholds sit between the closest pairs of different
requests in the shipped files (Jaccard <= 0.38, containment <= 0.75) and the paraphrases pinned in
tests/data/test_datasets.py (0.50-1.00). The bar is conservative on purpose: "convert a string to an integer" and
"... to a date" in JavaScript (3 of 5 content words shared) count as one request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations, product

JACCARD = 0.5
CONTAINMENT = 0.8
CONTAINED_MIN = 4

_STOP_WORDS = """a about after all also am an and any are as at be been before being best between but by can could
did do does doing for from get gets getting had has have he her him his how i if in into is it its just let like
me might my no not of on or our out please really should so some someone something such than that the their them
then there these they this those to up us very was we were what whats when where which while who whom why will
with without would you your yours"""
# Words that frame a request rather than say what it is about ("in plain words, explain how X works").
_FRAMING_WORDS = """actually basically describe difference example examples exactly explain give guide help idea ideas
instruction instructions know make makes making need plain quick quickly short show simple simply step steps tell
term terms tip tips use using want way ways word words work works write"""
STOP_WORDS = frozenset(_STOP_WORDS.split()) | frozenset(_FRAMING_WORDS.split())
_SUFFIXES = ("ing", "ed", "es", "s")


def normalise(text: str) -> str:
    """Lower case, apostrophes removed ("what's" -> "whats"), other punctuation as spaces, whitespace collapsed."""
    text = text.lower().replace("'", "").replace("\u2019", "")
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if word.endswith(suffix) and len(word) - len(suffix) >= 3 and not word.endswith("ss"):
            return word[: -len(suffix)]
    return word


def content_words(text: str) -> frozenset[str]:
    """The stemmed words that carry the request; all words for a prompt made only of stop words."""
    words = normalise(text).split()
    return frozenset(_stem(word) for word in [w for w in words if w not in STOP_WORDS] or words)


@dataclass(frozen=True)
class Match:
    reason: str
    score: float


def match(a: str, b: str) -> Match | None:
    """Why `a` and `b` count as the same request, or None."""
    if normalise(a) == normalise(b):
        return Match("exact after normalising", 1.0)
    return _match_words(content_words(a), content_words(b))


def _match_words(wa: frozenset[str], wb: frozenset[str]) -> Match | None:
    shared = len(wa & wb)
    if not shared:
        return None
    jaccard = shared / len(wa | wb)
    if jaccard >= JACCARD:
        return Match("content-word Jaccard", jaccard)
    smaller = min(len(wa), len(wb))
    if smaller >= CONTAINED_MIN and shared / smaller >= CONTAINMENT:
        return Match("contained in the other", shared / smaller)
    return None


@dataclass(frozen=True)
class Prompt:
    where: str  # "FILE:LINE id"
    text: str


@dataclass(frozen=True)
class Overlap:
    a: Prompt
    b: Prompt
    found: Match

    def __str__(self) -> str:
        return (f"{self.a.where} ~ {self.b.where} ({self.found.reason} {self.found.score:.2f}):"
                f" {self.a.text!r} / {self.b.text!r}")


def _indexed(prompts: Iterable[Prompt]) -> list[tuple[Prompt, str, frozenset[str]]]:
    return [(p, normalise(p.text), content_words(p.text)) for p in prompts]


def _compare(pairs: Iterable[tuple[tuple[Prompt, str, frozenset[str]], ...]]) -> list[Overlap]:
    found = []
    for (pa, na, wa), (pb, nb, wb) in pairs:
        hit = Match("exact after normalising", 1.0) if na == nb else _match_words(wa, wb)
        if hit:
            found.append(Overlap(pa, pb, hit))
    return found


def overlaps_between(left: Sequence[Prompt], right: Sequence[Prompt]) -> list[Overlap]:
    return _compare(product(_indexed(left), _indexed(right)))


def overlaps_within(prompts: Sequence[Prompt]) -> list[Overlap]:
    return _compare(combinations(_indexed(prompts), 2))
