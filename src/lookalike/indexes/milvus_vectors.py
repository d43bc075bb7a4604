"""One fixed-size vector per image in a Milvus collection (the image id its primary key), scored in
the same units as the FAISS `VectorIndex`, so thresholds, calibration and fusion hold on either.

Each metric has a form Milvus offers (`Form`):
- embeddings (inner product): as they are, in an HNSW graph; distance = 1 - inner product.
- binary codes (Hamming): as sign vectors (bit b -> 1 - 2b) by inner product, since Milvus Lite has
  no binary vectors: inner product = bits - 2 * Hamming distance, so the distance is exact. They take
  32 times a packed code's memory; exact (FLAT), as FAISS's binary index is.
- histograms (L1, which Milvus lacks): square roots of the bins by L2, whose squared distance (the
  Hellinger distance's) is at most the L1 distance (|√p - √q|² <= |p - q|). A range search by it
  therefore finds every histogram within an L1 threshold; the candidates are re-scored by their exact
  L1 distance from the store, and nearest-k takes RERANK candidates before re-scoring. Recall against
  exact L1: docs/benchmarks.md.
"""

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from pymilvus import DataType, MilvusClient

from ..errors import InvalidRequest
from ..features import FeatureSpec
from .base import Hit, IndexSetup, Marker, Measure, Training
from .milvus import MAX_HITS, Collection, padded
from .vectors import RERANK, best_of_variants

HNSW = {"index_type": "HNSW", "params": {"M": 16, "efConstruction": 200}}
FLAT = {"index_type": "FLAT", "params": {}}
HNSW_EF = 64  # candidates the graph search keeps: at least the hits asked for


@dataclass(frozen=True)
class Form:
    """How one metric's features are kept in Milvus and how its answers become distances."""

    metric: str  # Milvus's
    index: dict
    encode: Callable[[np.ndarray, FeatureSpec], np.ndarray]
    distances: Callable[[np.ndarray, FeatureSpec], np.ndarray]  # Milvus's scores -> ours
    radius: Callable[[float, FeatureSpec], float]  # our threshold -> a range search's radius (exclusive)
    rescored: bool = False  # candidates re-scored exactly from the store


def _signs(codes: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    return 1.0 - 2.0 * np.unpackbits(codes, axis=1).astype(np.float32)


FORMS = {
    "ip": Form(
        "IP",
        HNSW,
        lambda vectors, spec: vectors,
        lambda products, spec: np.maximum(1.0 - products, 0.0),
        lambda threshold, spec: 1.0 - threshold - 1e-5,
    ),
    "hamming": Form(
        "IP",
        FLAT,
        _signs,
        lambda products, spec: np.rint((spec.dim - products) / 2),
        lambda threshold, spec: spec.dim - 2 * np.floor(threshold) - 1,
    ),
    "l1": Form(
        "L2",
        FLAT,
        lambda histograms, spec: np.sqrt(np.maximum(histograms, 0)),
        lambda squared, spec: squared,
        lambda threshold, spec: threshold * (1 + 1e-4) + 1e-6,
        rescored=True,
    ),
}


class MilvusVectorIndex:
    measure: ClassVar[Measure] = Measure.DISTANCE

    def __init__(self, setup: IndexSetup, existing: bool = False):
        """An empty collection, in place of any of this engine's; `existing`: the one there."""
        self.setup = setup
        self.spec = setup.spec
        self.form = FORMS[self.spec.metric]
        self.collection = Collection(setup)
        if not existing:
            self.collection.create(*self._schema())

    @property
    def ntotal(self) -> int:
        return self.collection.count()

    def add(self, image_ids, features) -> None:
        if len(image_ids):
            vectors = self.form.encode(self._as_rows(features), self.spec)
            self.collection.insert([{"id": int(i), "vector": v} for i, v in zip(image_ids, vectors)])

    def remove(self, image_ids) -> None:
        image_ids = [int(i) for i in image_ids]
        if image_ids:
            self.collection.delete(ids=image_ids)

    def search(self, queries, k: int | None = None, threshold: float | None = None) -> list[Hit]:
        rows = self._as_rows(queries)
        if k is not None or threshold is None:
            hits = best_of_variants(*self._nearest(rows, MAX_HITS if k is None else min(k, MAX_HITS)))
        else:
            hits = best_of_variants(*self._within(rows, threshold))
        if threshold is not None:
            hits = [hit for hit in hits if hit.score <= threshold]
        return hits[:k]

    def neighbours(self, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids): the k nearest stored images of each row of `features`, nearest first."""
        return self._nearest(self._as_rows(features), k)

    def stats(self) -> dict:
        return {"indexed": self.ntotal, "milvus": self.form.index["index_type"]}

    def needs_training(self) -> bool:
        return False

    def save(self, marker: Marker) -> None:
        self.collection.save_marker(marker)

    @classmethod
    def load(cls, setup: IndexSetup) -> tuple["MilvusVectorIndex", Marker] | None:
        marker = Collection(setup).saved_marker()
        return None if marker is None else (cls(setup, existing=True), marker)

    @classmethod
    def build(cls, setup: IndexSetup) -> "MilvusVectorIndex":
        index = cls(setup)
        ids = setup.source.ids()
        for start in range(0, len(ids), 10_000):  # memory holds one batch, never the library
            index.add(*setup.source.read(ids[start : start + 10_000].tolist()))
        return index

    @classmethod
    def train(cls, setup: IndexSetup, training: Training) -> "MilvusVectorIndex":
        raise InvalidRequest(
            f"{setup.name} is indexed in Milvus, which builds and trains its own index; whitening is offered "
            "only with LOOKALIKE_INDEX_BACKEND=faiss"
        )

    def _nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), k per query (fewer when fewer are stored, padded with -1)."""
        asked = min(max(k, RERANK), MAX_HITS) if self.form.rescored else k
        if asked == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        params = {"ef": max(asked, HNSW_EF)} if self.form.index is HNSW else {}
        found = self.collection.search(self.form.encode(queries, self.spec), asked, params)
        distances, ids = self._scored(queries, found, asked)
        return distances[:, :k], ids[:, :k]

    def _within(self, queries: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        params = {"radius": float(self.form.radius(threshold, self.spec))}
        if self.form.index is HNSW:
            params["ef"] = MAX_HITS
        found = self.collection.search(self.form.encode(queries, self.spec), MAX_HITS, params)
        return self._scored(queries, found, max(map(len, found), default=0))

    def _scored(self, queries: np.ndarray, found: list[list[dict]], limit: int) -> tuple[np.ndarray, np.ndarray]:
        scores, ids = padded(found, limit)
        if not self.form.rescored:
            distances = self.form.distances(scores, self.spec)
            return np.where(ids >= 0, distances, np.inf).astype(np.float32), ids
        return self._rescored(queries, ids)

    def _rescored(self, queries: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidates by their exact L1 distance to each query, nearest first; those deleted from the
        store meanwhile drop out."""
        stored, vectors = self.setup.source.read(np.unique(ids[ids >= 0]).tolist())
        if len(stored) == 0:
            return np.full(ids.shape, np.inf, np.float32), np.full(ids.shape, -1, np.int64)
        row = np.searchsorted(stored, ids).clip(0, len(stored) - 1)
        known = (ids >= 0) & (stored[row] == ids)
        exact = np.abs(queries[:, None, :] - vectors[row]).sum(axis=2)
        exact = np.where(known, exact, np.inf)
        order = np.argsort(exact, axis=1, kind="stable")
        ids = np.where(np.take_along_axis(known, order, 1), np.take_along_axis(ids, order, 1), -1)
        return np.take_along_axis(exact, order, 1).astype(np.float32), ids

    def _schema(self):
        schema = MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.spec.dim)
        index_params = MilvusClient.prepare_index_params()
        index_params.add_index("vector", metric_type=self.form.metric, **self.form.index)
        return schema, index_params

    def _as_rows(self, features) -> np.ndarray:
        return np.ascontiguousarray(np.atleast_2d(np.asarray(features)), dtype=self.spec.dtype)
