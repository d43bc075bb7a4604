"""The one protocol every kind of index follows, the hit it answers with, and what it is made from.

An index is derived from one engine's features in the store: it can always be rebuilt from them. Its
file carries a `Marker` (which store, which point of the engine's journal), so on open it is caught up
from the journal or rebuilt, never served stale.
"""

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self

import numpy as np

from ..features import FeatureSpec, Matches

DEFAULT_NPROBE = 16  # inverted lists a trained index scans per query


class Measure(StrEnum):
    """What a hit's score counts, and so which way is better."""

    DISTANCE = "distance"  # smaller is nearer
    MATCHES = "matches"  # keypoint matches one geometry explains: more is better
    RELEVANCE = "relevance"  # how well a text matches the query: more is better

    @property
    def higher_is_better(self) -> bool:
        return self is not Measure.DISTANCE

    def passes(self, score: float, threshold: float) -> bool:
        """Whether `score` is at least as good as `threshold` (inclusive)."""
        return score >= threshold if self.higher_is_better else score <= threshold


@dataclass(frozen=True)
class Hit:
    """A found image, scored by its index's `measure`; the file name is the library's to fill in."""

    image_id: int
    score: float
    measure: Measure
    file_name: str = ""
    precise_matches: int | None = None  # points indexes: `Matches.precise` of the score's matches

    def as_dict(self) -> dict:
        """{image_id, <measure>: score, file_name}, and precise_matches where counted: what the API and
        the CLI print."""
        found = {"image_id": self.image_id, self.measure.value: self.score, "file_name": self.file_name}
        return found if self.precise_matches is None else found | {"precise_matches": self.precise_matches}


@dataclass(frozen=True)
class Marker:
    """Which store, and which point of its journal, an index reflects."""

    store_uuid: str
    seq: int


class FeatureSource(Protocol):
    """One engine's features in the store, as an index reads them."""

    spec: FeatureSpec

    def read(self, image_ids: list[int] | None = None) -> tuple[np.ndarray, Any]:
        """(ids, features) of every stored feature, or of those of `image_ids` present, ids ascending
        when all are read: an (n, width) array for fixed-size kinds, else a list."""

    def ids(self) -> np.ndarray: ...

    def count(self) -> int: ...


@dataclass(frozen=True)
class IndexSetup:
    """What one engine's index is opened, built and trained with."""

    source: FeatureSource
    files: Path | None  # the index's files: this path plus a suffix of the kind's; None: never saved
    nprobe: int = DEFAULT_NPROBE
    # A points engine's exact check of a query against candidates: for each, the matches one geometry explains.
    verify: Callable[[Any, list], list[Matches]] | None = None
    text_queries: bool = False  # the engine also searches this index with embedded texts
    milvus: Any = None  # the `indexes.milvus.Milvus` holding the index; None: FAISS and files

    @property
    def backend(self) -> str:
        return "faiss" if self.milvus is None else "milvus"

    @property
    def spec(self) -> FeatureSpec:
        return self.source.spec

    @property
    def name(self) -> str:
        """The engine's name, as its index files are named."""
        return self.files.name if self.files else "the index"

    def file(self, suffix: str) -> Path:
        return self.files.with_name(self.files.name + suffix)


@dataclass(frozen=True)
class Training:
    """How to train an index: whiten it (embeddings), and compress it; `compressed` None means the
    kind's own choice (points: compressed, which is what training them is for; embeddings: exact)."""

    whiten: bool = False
    compressed: bool | None = None


class Index(Protocol):
    """An index of one engine's features. Searches may run concurrently with each other and with adds
    and removes; each kind locks what it must."""

    measure: ClassVar[Measure]

    @property
    def ntotal(self) -> int:
        """Images indexed."""

    def add(self, image_ids: np.ndarray, features) -> None: ...

    def remove(self, image_ids: Iterable[int]) -> None: ...

    def search(self, queries: list, k: int | None = None, threshold: float | None = None) -> list[Hit]:
        """Images scored against any of the `queries` (variants of one query: each image keeps its
        best score), best first: at most `k` (all, if None) of those scoring at least as well as
        `threshold` (all, if None)."""

    def save(self, marker: Marker) -> None:
        """Write the index to its files atomically, with `marker`."""

    def stats(self) -> dict:
        """{"indexed": ntotal, ...} and what else describes this kind (descriptors, training)."""

    def needs_training(self) -> bool:
        """Whether the index has outgrown its form and should be (re)trained now."""

    @classmethod
    def load(cls, setup: IndexSetup) -> tuple[Self, Marker] | None:
        """The saved index and its marker; None if missing, unreadable, or made for another spec."""

    @classmethod
    def build(cls, setup: IndexSetup) -> Self:
        """A new index of every stored feature, trained as far as its saved training or size says."""

    @classmethod
    def train(cls, setup: IndexSetup, training: Training) -> Self:
        """A newly trained index of every stored feature; raises InvalidRequest where the kind or the
        library's size does not allow `training`. Training state on disk is written last."""
