"""Words: how text becomes searchable words, and which known words a query word matches.

Folding makes "Café", "CAFE" and "café" one word: NFKD, casefold, the accents of Latin, Greek and
Cyrillic letters (U+0300-U+036F) dropped, then NFC, so Hangul syllables and kana voicing marks come
back whole. Punctuation, symbols and spaces split words; control and format characters are dropped
(a soft hyphen or a zero-width space inside a word does not split it). A run of CJK characters, which
has no spaces between its words, becomes its overlapping bigrams; stored text adds every single
character, so a one-character query finds it inside a longer run.

A query word finds known words exactly (the index's own look-up), and here by prefix, by substring,
within a few edits, and by sound (double metaphone, primary and secondary codes). Each way has a
weight, best first: EXACT, PREFIX, SUBSTRING, ONE_EDIT, TWO_EDITS, SOUND. A word that sounds the same
and is within two edits gets SOUND_BONUS over its edits' weight.
"""

import bisect
import math
import re
import unicodedata
from collections.abc import Iterable, Iterator

import numpy as np
from doublemetaphone import doublemetaphone
from rapidfuzz import process
from rapidfuzz.distance import OSA

from ..features import TextLine

EXACT, PREFIX, SUBSTRING, ONE_EDIT, TWO_EDITS, SOUND = 1.0, 0.8, 0.7, 0.55, 0.45, 0.3
EDIT_WEIGHTS = {0: EXACT, 1: ONE_EDIT, 2: TWO_EDITS}
# A word within edits that also sounds the same: above the words as many edits away, below those fewer.
# (Counting the two as independent evidence put "fone" -> "phone" above "one", but also a random typo's
# sound-alike two edits away above the typed word one edit away: bench/text_index.py, 1-edit top hit
# 0.93 -> 0.75.)
SOUND_BONUS = 0.05
PREFIX_MIN = 2  # a one-letter prefix would match a twentieth of the vocabulary
SUBSTRING_MIN = 3  # shorter substrings hit most words; 3 keeps the scan's hits few
SOUND_MIN = 3
MAX_WORD_LENGTH = 64  # longer tokens (a URL, a run of digits) are cut, stored and queried alike
MAX_SIMILAR = 64  # known words one query word may expand to: its cost is bounded by this many postings
SCAN_LIMIT = 1024  # prefix or substring hits examined per query word, before the best MAX_SIMILAR are kept
FRESH_LIMIT = 2048  # words added or removed since the sorted vocabulary was rebuilt, scanned one by one
MIN_WEIGHT = 0.01  # a word of a line read with confidence 0 is still findable, just barely
FULL_SIZE_HEIGHT = 0.05  # text a twentieth of the image high (a sign, a title) counts fully
FOLDING_CACHE = 30_000  # characters whose folding is remembered: every script in use, a few MiB

_CJK = (
    "\u1100-\u11ff\u2e80-\u2fdf\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
    "\ua960-\ua97f\uac00-\ud7ff\uf900-\ufaff\U00020000-\U0003134f"
)
_TOKEN = re.compile(f"[{_CJK}]+|[^\\s{_CJK}]+")
_IS_CJK = re.compile(f"[{_CJK}]")


def allowed_edits(length: int) -> int:
    """Edits a query word of `length` characters may be from a stored word.

    Typed words carry about one typo each. Under 4 characters one edit reaches mostly other real
    words ("cat": bat, car, cut), so none; from 8 characters, two edits still leave the word
    recognisable ("resturaunt" for "restaurant") and few other words that close. Edits are counted as
    optimal string alignment: Levenshtein's, plus a swap of two neighbours as one edit, the most
    common typo ("form" for "from").
    """
    return 0 if length < 4 else 1 if length < 8 else 2


class _Folding(dict):
    """str.translate's table, filled per character on first sight: what it becomes after NFKD and
    casefold. Building it for all of Unicode up front would cost a noticeable start-up; it stops
    growing at FOLDING_CACHE characters, so queries of random code points cannot fill memory."""

    def __missing__(self, code: int) -> int | str | None:
        char = chr(code)
        category = unicodedata.category(char)
        if 0x300 <= code <= 0x36F or category == "Cf" or (category == "Cc" and not char.isspace()):
            value = None  # accents of Latin, Greek and Cyrillic; controls and format characters
        elif category[0] in "PSZC":
            value = " "  # punctuation, symbols, spaces (and whitespace controls) split words
        else:
            value = code
        if len(self) < FOLDING_CACHE:
            self[code] = value
        return value


_FOLDING = _Folding()


def fold(text: str) -> str:
    return unicodedata.normalize("NFC", unicodedata.normalize("NFKD", text).casefold().translate(_FOLDING))


def is_cjk(word: str) -> bool:
    return _IS_CJK.match(word) is not None


def words(text: str, every_character: bool = False) -> Iterator[str]:
    """The folded words of `text`, in order; CJK runs as bigrams (a one-character run as itself), and
    with `every_character` also each of their characters (stored text)."""
    for token in _TOKEN.findall(fold(text)):
        if not is_cjk(token):
            yield token[:MAX_WORD_LENGTH]
        elif len(token) == 1:
            yield token
        else:
            yield from (token[i : i + 2] for i in range(len(token) - 1))
            if every_character:
                yield from token


def line_weight(line: TextLine) -> float:
    """How much a line's words count: the reader's confidence times the size of the text, from half
    for tiny print to full at FULL_SIZE_HEIGHT; a line without a box (a caption, a typed query)
    counts at its confidence alone."""
    confidence = line.confidence if math.isfinite(line.confidence) else 1.0
    confidence = min(max(confidence, MIN_WEIGHT), 1.0)
    if len(line.box) < 4:
        return confidence
    top_left, top_right, bottom_right, bottom_left = line.box[:4]
    height = (math.dist(top_left, bottom_left) + math.dist(top_right, bottom_right)) / 2
    if not math.isfinite(height):
        return confidence
    return confidence * (0.5 + 0.5 * min(1.0, height / FULL_SIZE_HEIGHT))


def stored_words(lines: Iterable[TextLine]) -> dict[str, float]:
    """Each word of a stored text with the weight of its best line."""
    weights: dict[str, float] = {}
    for line in lines:
        weight = line_weight(line)
        for word in words(line.text, every_character=True):
            if weight > weights.get(word, 0.0):
                weights[word] = weight
    return weights


def query_words(lines: Iterable[TextLine], limit: int, max_characters: int) -> dict[str, float]:
    """The first `limit` distinct words of a query, each with its best line's weight, read from at
    most `max_characters` characters (lines count one more each): an absurd query costs no more."""
    weights: dict[str, float] = {}
    budget = max_characters
    for line in lines:
        if budget <= 0:
            break
        text = line.text[:budget]
        budget -= len(text) + 1
        weight = line_weight(line)
        for word in words(text):
            if word in weights:
                weights[word] = max(weights[word], weight)
            elif len(weights) < limit:
                weights[word] = weight
    return weights


def sounds(word: str) -> set[str]:
    """The word's double metaphone codes; none for short words or anything but Latin letters."""
    if len(word) < SOUND_MIN or not (word.isascii() and word.isalpha()):
        return set()
    return {code for code in doublemetaphone(word) if code}


def letters(word: str) -> int:
    """The characters a word holds, as bits of a 64-bit mask (code point mod 64: collisions only make
    the filter it serves pass more)."""
    mask = 0
    for char in set(word):
        mask |= 1 << (ord(char) & 63)
    return mask


def _close(a: int, b: int, edits: int) -> bool:
    return (a & ~b).bit_count() <= edits and (b & ~a).bit_count() <= edits


class Vocabulary:
    """Every stored word, searchable by prefix, substring, edits and sound.

    Most words sit in a sorted tier: a list (prefixes by bisection), the same words joined by newlines
    (substrings by str.find, at C speed) and grouped by length (edits: only lengths within reach are
    compared). Words added since, and those removed from it, wait in small sets until `settle` rebuilds
    it, so adding one image never re-sorts the whole vocabulary.
    """

    def __init__(self, known: Iterable[str] = ()) -> None:
        self._sorted: list[str] = []
        self._joined = "\n"
        # The same words by length, in no order, with their letters() masks.
        self._by_length: dict[int, tuple[list[str], np.ndarray]] = {}
        self._fresh: dict[str, int] = {}  # added, not yet in the sorted tier: their letters() masks
        self._gone: set[str] = set()  # still in the sorted tier, no longer known
        self._sounds: dict[str, set[str]] = {}
        for word in known:
            self.add(word)
        self.settle(force=True)

    def add(self, word: str) -> None:
        """Add a word not known now."""
        if word in self._gone:
            self._gone.discard(word)
        else:
            self._fresh[word] = letters(word)
        for code in sounds(word):
            self._sounds.setdefault(code, set()).add(word)

    def discard(self, word: str) -> None:
        """Forget a known word."""
        if word in self._fresh:
            del self._fresh[word]
        else:
            self._gone.add(word)
        for code in sounds(word):
            alike = self._sounds[code]
            alike.discard(word)
            if not alike:
                del self._sounds[code]

    def settle(self, force: bool = False) -> None:
        """Rebuild the sorted tier once enough words wait outside it (or now, with `force`). Only the
        waiting words are worked on one by one; the rest is merged, filtered and copied in bulk."""
        if not force and len(self._fresh) + len(self._gone) <= FRESH_LIMIT:
            return
        gone = self._gone
        kept = [word for word in self._sorted if word not in gone] if gone else self._sorted
        self._sorted = sorted(kept + sorted(self._fresh))  # two sorted runs: Timsort merges them in linear time
        self._joined = "\n" + "\n".join(self._sorted) + "\n"
        arriving: dict[int, list[str]] = {}
        for word in self._fresh:
            arriving.setdefault(len(word), []).append(word)
        for length in self._by_length.keys() | arriving.keys():
            group, masks = self._by_length.get(length, ([], np.zeros(0, np.uint64)))
            if gone:
                staying = [i for i, word in enumerate(group) if word not in gone]
                group, masks = [group[i] for i in staying], masks[staying]
            new = arriving.get(length, [])
            group, masks = group + new, np.concatenate([masks, np.array([self._fresh[w] for w in new], np.uint64)])
            if group:
                self._by_length[length] = (group, masks)
            else:
                del self._by_length[length]
        self._fresh, self._gone = {}, set()

    def similar(self, word: str) -> dict[str, float]:
        """Known words other than `word` itself that it matches, each with its best way's weight: at
        most MAX_SIMILAR, the best weights first, then the closest in length, then alphabetical."""
        if is_cjk(word):
            return {}  # CJK matches by its bigrams, exactly
        found: dict[str, float] = {}

        def offer(candidate: str, weight: float) -> None:
            if weight > found.get(candidate, 0.0):
                found[candidate] = weight

        if len(word) >= SUBSTRING_MIN:
            for candidate in self._containing(word):
                offer(candidate, PREFIX if candidate.startswith(word) else SUBSTRING)
        elif len(word) >= PREFIX_MIN:
            for candidate in self._starting(word):
                offer(candidate, PREFIX)
        if edits := allowed_edits(len(word)):
            for candidate, distance in self._within(word, edits):
                offer(candidate, EDIT_WEIGHTS[distance])
        for code in sounds(word):
            for candidate in self._sounds.get(code, ()):
                # Spelt close and sounding the same ranks first among words as close, never above a closer one.
                distance = OSA.distance(word, candidate, score_cutoff=2)
                offer(candidate, EDIT_WEIGHTS[distance] + SOUND_BONUS if distance <= 2 else SOUND)
        found.pop(word, None)
        if len(found) > MAX_SIMILAR:
            best = sorted(found, key=lambda c: (-found[c], abs(len(c) - len(word)), c))[:MAX_SIMILAR]
            found = {candidate: found[candidate] for candidate in best}
        return found

    def _starting(self, prefix: str) -> Iterator[str]:
        start = bisect.bisect_left(self._sorted, prefix)
        for candidate in self._sorted[start : start + SCAN_LIMIT]:
            if not candidate.startswith(prefix):
                break
            if candidate not in self._gone:
                yield candidate
        yield from (candidate for candidate in self._fresh if candidate.startswith(prefix))

    def _containing(self, part: str) -> Iterator[str]:
        joined, position = self._joined, 0
        for _ in range(SCAN_LIMIT):
            position = joined.find(part, position)
            if position < 0:
                break
            start = joined.rfind("\n", 0, position) + 1
            position = joined.find("\n", position)  # the next hit is in a later word
            candidate = joined[start:position]
            if candidate not in self._gone:
                yield candidate
        yield from (candidate for candidate in self._fresh if part in candidate)

    def _within(self, word: str, edits: int) -> Iterator[tuple[str, int]]:
        """Known words within `edits` of `word`: only lengths within reach, and of those only words whose
        letters differ by at most `edits` each way (an edit adds or drops at most one letter), are
        compared; that cheap filter passes a few percent of them."""
        reach = range(len(word) - edits, len(word) + edits + 1)
        mask = letters(word)
        groups = [[c for c, m in self._fresh.items() if len(c) in reach and _close(m, mask, edits)]]
        for length in reach:
            group, masks = self._by_length.get(length, ([], np.zeros(0, np.uint64)))
            close = (np.bitwise_count(masks & ~np.uint64(mask)) <= edits) & (
                np.bitwise_count(~masks & np.uint64(mask)) <= edits
            )
            groups.append([group[i] for i in np.flatnonzero(close).tolist()])
        for choices in groups:
            for candidate, distance, _ in process.extract(
                word, choices, scorer=OSA.distance, score_cutoff=edits, limit=None
            ):
                if candidate not in self._gone:
                    yield candidate, distance
