"""The text index: the words of every image's text (OCR lines, captions), found by what a query says.

Each stored word keeps postings: the images it is in, each with the word's weight there (the
confidence of its best line times the size of its text; see `words.line_weight`). A query's words
(the first MAX_QUERY_WORDS distinct ones) each expand to the known words they match, exactly or
through `words.Vocabulary` by prefix, substring, edits or sound, and each image counts once per query
word, at its best match:

    match(q, image)  = max over the image's words w that q matches of way(q, w) * weight(w, image)
    idf(q)           = ln(1 + images indexed / images q matches)  # rarer words count more
    quality(image)   = sum of weight(q) * idf(q) * match(q, image) over the query words it matches
                       / the same sum over every query word, as if each matched fully
    relevance(image) = (query words matched - 1 + quality) / query words

`way` is EXACT 1.0 > PREFIX 0.8 > SUBSTRING 0.7 > ONE_EDIT 0.55 > TWO_EDITS 0.45 > SOUND 0.3 (a
word within two edits that also sounds the same gets 0.05 over its edits' weight), and
weight(q) is the query line's own weight (1 for typed text). Relevance is in (0, 1], 1 for an image
holding every query word exactly in large, confidently read text; an image matching more query words
always ranks above one matching fewer, since quality is in (0, 1]. A search with several variants
(several TextLines) keeps each image's best relevance.

Searches share a readers-writer lock; adds and removes take it alone. The file is one `.text` index
file with no FAISS part: the words, their postings and the images, as arrays in `extra`.
"""

import io
import math
import zipfile
from array import array
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..errors import InvalidRequest
from ..features import TextLines
from ..locks import SharedExclusiveLock
from .base import Hit, IndexSetup, Marker, Measure, Training
from .files import read_index_file, write_index_file
from .words import EXACT, Vocabulary, query_words, stored_words

MAX_QUERY_WORDS = 64  # distinct words of a query considered, in reading order; the rest are ignored
MAX_QUERY_CHARACTERS = 16_384  # of a query's text read at all
BUILD_BATCH = 1000
FILE_FORMAT = 1


class TextIndex:
    measure: ClassVar[Measure] = Measure.RELEVANCE

    def __init__(self, setup: IndexSetup) -> None:
        self.setup = setup
        self.spec = setup.spec
        # Postings: the slots of the images holding each word, and the word's weight in each. Two dicts of
        # flat arrays, not one object per word: the garbage collector has nothing to walk there.
        self._slots: dict[str, array] = {}  # array("i")
        self._weights: dict[str, array] = {}  # array("f")
        self._vocabulary = Vocabulary()
        # Images get dense slots, so a search scores them in flat arrays; freed slots are reused.
        self._slot_of: dict[int, int] = {}
        self._image_at = array("q")  # slot -> image id, -1 where free
        self._free_slots: list[int] = []
        self._words_of: dict[int, str] = {}  # image id -> its words joined by newlines, to remove it
        # Searches share the index; adds and removes wait for them and run alone.
        self._lock = SharedExclusiveLock()

    @property
    def ntotal(self) -> int:
        return len(self._slot_of)

    def stats(self) -> dict:
        return {"indexed": self.ntotal, "words": len(self._slots)}

    def needs_training(self) -> bool:
        return False

    # -- changes ---------------------------------------------------------------------------------

    def add(self, image_ids, features: list[TextLines], settle: bool = True) -> None:
        """Index each image's words; an image already indexed is replaced. `settle` False leaves the
        vocabulary's new words unsorted (a build sorts them once, at its end)."""
        image_ids = [int(image_id) for image_id in image_ids]
        if len(image_ids) != len(features):
            raise ValueError(f"{len(image_ids)} image ids for {len(features)} features")
        weighted = [stored_words(feature) for feature in features]  # the costly part, outside the lock
        with self._lock.exclusive():
            self._forget([image_id for image_id in image_ids if image_id in self._slot_of])
            for image_id, weights in zip(image_ids, weighted):
                self._store(image_id, weights)
            if settle:
                self._vocabulary.settle()

    def remove(self, image_ids: Iterable[int]) -> None:
        with self._lock.exclusive():
            self._forget([int(image_id) for image_id in image_ids if int(image_id) in self._slot_of])
            self._vocabulary.settle()

    def _store(self, image_id: int, weights: dict[str, float]) -> None:
        if image_id in self._slot_of:  # twice in one add: the last one wins
            self._forget([image_id])
        slot = self._free_slots.pop() if self._free_slots else len(self._image_at)
        if slot == len(self._image_at):
            self._image_at.append(image_id)
        else:
            self._image_at[slot] = image_id
        self._slot_of[image_id] = slot
        self._words_of[image_id] = "\n".join(weights)
        for word, weight in weights.items():
            if word not in self._slots:
                self._slots[word], self._weights[word] = array("i"), array("f")
                self._vocabulary.add(word)
            self._slots[word].append(slot)
            self._weights[word].append(weight)

    def _forget(self, image_ids: list[int]) -> None:
        """Drop indexed images: each of their words' postings is filtered once, however many go."""
        if not image_ids:
            return
        slots = np.array([self._slot_of.pop(image_id) for image_id in image_ids], np.int32)
        # An image without words holds "" there, which splits into one empty "word" no posting has.
        affected = {word for image_id in image_ids for word in self._words_of.pop(image_id).split("\n") if word}
        for word in affected:
            held = np.frombuffer(self._slots[word], np.int32)
            kept = ~np.isin(held, slots)
            if not kept.any():
                del self._slots[word], self._weights[word]
                self._vocabulary.discard(word)
                continue
            # New arrays rather than deletions in place: an array cannot shrink while a view of it lives.
            self._slots[word] = array("i", held[kept].tobytes())
            self._weights[word] = array("f", np.frombuffer(self._weights[word], np.float32)[kept].tobytes())
        for slot in slots.tolist():
            self._image_at[slot] = -1
        self._free_slots.extend(slots.tolist())

    # -- searches --------------------------------------------------------------------------------

    def search(self, queries: list[TextLines], k: int | None = None, threshold: float | None = None) -> list[Hit]:
        """Images whose text matches any variant, most relevant first (ties by image id): those with
        relevance at least `threshold`, the best `k` if given."""
        if k is not None and k <= 0:
            return []
        asked = [query_words(query, MAX_QUERY_WORDS, MAX_QUERY_CHARACTERS) for query in queries]
        with self._lock.shared():
            best = np.zeros(len(self._image_at))
            for weights in asked:
                if weights:
                    np.maximum(best, self._relevance(weights), out=best)
            found = np.flatnonzero((best > 0) & (best >= threshold) if threshold is not None else best > 0)
            image_ids = np.array(self._image_at)[found]
        scores = best[found]
        order = np.lexsort((image_ids, -scores))[:k]
        return [Hit(int(image_ids[i]), float(scores[i]), Measure.RELEVANCE) for i in order]

    def _relevance(self, asked: dict[str, float]) -> np.ndarray:
        """Every slot's relevance to one query's words (their weights): 0 where nothing matched."""
        slots = len(self._image_at)
        quality = np.zeros(slots)  # sum of weight(q) * idf(q) * match(q, image)
        matched = np.zeros(slots, np.int32)
        match = np.zeros(slots)  # match(q, image) for the query word at hand
        total = 0.0
        for word, query_weight in asked.items():
            match.fill(0)
            for known, way in self._expand(word).items():
                # Copies, not views: an array that a view of it outlives (in a traceback) can never grow.
                held, weights = np.array(self._slots[known]), np.array(self._weights[known])
                match[held] = np.maximum(match[held], np.multiply(weights, way, dtype=np.float64))
            images = np.count_nonzero(match)
            importance = query_weight * math.log(1 + self.ntotal / max(images, 1))
            total += importance
            if images:
                quality += importance * match
                matched += match > 0
        if total == 0:
            return quality
        return np.where(matched > 0, (matched - 1 + quality / total) / len(asked), 0.0)

    def _expand(self, word: str) -> dict[str, float]:
        """The known words a query word matches, each with its way's weight."""
        similar = self._vocabulary.similar(word)
        if word in self._slots:
            similar[word] = EXACT
        return similar

    # -- building and training -------------------------------------------------------------------

    @classmethod
    def build(cls, setup: IndexSetup) -> "TextIndex":
        """Read and indexed BUILD_BATCH images at a time: memory holds one batch's texts, not the library's."""
        index = cls(setup)
        image_ids = setup.source.ids()
        for start in range(0, len(image_ids), BUILD_BATCH):
            index.add(*setup.source.read(image_ids[start : start + BUILD_BATCH].tolist()), settle=False)
        index._vocabulary.settle(force=True)
        return index

    @classmethod
    def train(cls, setup: IndexSetup, training: Training) -> "TextIndex":
        raise InvalidRequest(f"{setup.name} is a text index: it has nothing to train (words are looked up as they are)")

    # -- persistence -----------------------------------------------------------------------------

    def save(self, marker: Marker) -> None:
        with self._lock.shared():
            known = list(self._slots)
            arrays = {
                "words": np.frombuffer("\n".join(known).encode(), np.uint8),
                "counts": np.array([len(self._slots[w]) for w in known], np.int64),
                "slots": np.frombuffer(b"".join(self._slots[w].tobytes() for w in known), np.int32),
                "weights": np.frombuffer(b"".join(self._weights[w].tobytes() for w in known), np.float32),
                "images": np.array(self._image_at, np.int64),
            }
        extra = io.BytesIO()
        np.savez(extra, **arrays)
        header = {"marker": asdict(marker), "format": FILE_FORMAT, "indexed": self.ntotal, "words": len(known)}
        write_index_file(_index_path(self.setup), self.spec, header, extra=extra.getvalue())

    @classmethod
    def load(cls, setup: IndexSetup) -> tuple["TextIndex", Marker] | None:
        loaded = read_index_file(_index_path(setup), setup.spec)
        if loaded is None:
            return None
        header, extra, _ = loaded
        try:
            if header.get("format") != FILE_FORMAT:
                return None
            arrays = np.load(io.BytesIO(extra))
            index = cls._from_arrays(setup, {name: arrays[name] for name in arrays.files})
            return index, Marker(**header["marker"])
        except (OSError, EOFError, ValueError, KeyError, TypeError, IndexError, zipfile.BadZipFile):
            return None

    @classmethod
    def _from_arrays(cls, setup: IndexSetup, arrays: dict[str, np.ndarray]) -> "TextIndex":
        index = cls(setup)
        text = arrays["words"].tobytes().decode()
        known = text.split("\n") if text else []
        counts, slots, weights, images = arrays["counts"], arrays["slots"], arrays["weights"], arrays["images"]
        if len(known) != len(counts) or counts.sum() != len(slots) or len(slots) != len(weights):
            raise ValueError("inconsistent text index arrays")
        if len(slots) and (slots.min() < 0 or slots.max() >= len(images) or (images[slots] < 0).any()):
            raise ValueError("postings point at free slots")
        all_slots = array("i", slots.astype(np.int32).tobytes())
        all_weights = array("f", weights.astype(np.float32).tobytes())
        ends = np.cumsum(counts).tolist()
        for word, start, end in zip(known, [0, *ends], ends):
            index._slots[word], index._weights[word] = all_slots[start:end], all_weights[start:end]
        index._image_at = array("q", images.astype(np.int64).tobytes())
        image_at = images.tolist()
        index._slot_of = {image_id: slot for slot, image_id in enumerate(image_at) if image_id >= 0}
        index._free_slots = [slot for slot, image_id in enumerate(image_at) if image_id < 0][::-1]
        # Each image's words, from the postings turned around: which words hold each slot.
        by_slot = np.argsort(slots, kind="stable")
        word_numbers = np.repeat(np.arange(len(known)), counts)[by_slot].tolist()
        bounds = np.searchsorted(slots[by_slot], np.arange(len(images) + 1)).tolist()
        for image_id, slot in index._slot_of.items():
            index._words_of[image_id] = "\n".join([known[n] for n in word_numbers[bounds[slot] : bounds[slot + 1]]])
        index._vocabulary = Vocabulary(known)
        return index


def _index_path(setup: IndexSetup) -> Path:
    return setup.file(".text")
