"""One fixed-size vector per image in FAISS: binary codes by Hamming distance, float vectors by L1, or
embeddings by inner product (distance = 1 - inner product).

Binary features go into a Hamming `IndexBinaryFlat`, float features into a flat index with the
engine's metric; both wrapped in an id map so FAISS ids are image ids. An embedding index can instead
be made from a trained `Template` (whitening and/or IVF-PQ, `templates.py`), saved beside the index
file: each index file names the template it was built from, so a crash between saving a new template
and its index leaves an index that is rebuilt rather than served.
"""

import threading
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np

from ..errors import InvalidRequest
from .base import Hit, IndexSetup, Marker, Measure, Training
from .files import read_index_file, write_index_file
from .templates import Template, load_template, save_template, train_template

# Neighbours fetched first when a metric has no native range search; grown 4x until enough.
_RANGE_FIRST_K = 64
# Candidates a compressed index re-scores exactly with the stored vectors: at 1M images this lifted
# IVF-PQ's recall@10 from 0.52 to 0.99 (docs/benchmarks.md, 7f).
RERANK = 100
# PCA whitening estimates a covariance matrix: with fewer images than this it learns their noise.
MIN_WHITENING_IMAGES = 1_000
WHITENED_DIMS = 512
MIN_COMPRESSED_IMAGES = 10_000  # PQ's 256 centroids per sub-vector, and sqrt(n) inverted lists


class VectorIndex:
    measure: ClassVar[Measure] = Measure.DISTANCE

    def __init__(self, setup: IndexSetup, index=None, template: Template | None = None):
        self.setup = setup
        self.spec = setup.spec
        self.template = template
        self._index = index if index is not None else template.fresh() if template else _empty_index(setup)
        # A compressed index re-scores its candidates with the stored vectors.
        self._rescore = template is not None and template.compressed
        # FAISS indexes are not safe for a search concurrent with an add or remove.
        self._lock = threading.Lock()
        if template is not None and template.compressed:
            faiss.extract_index_ivf(self._index).nprobe = setup.nprobe

    @property
    def ntotal(self) -> int:
        return self._index.ntotal

    def add(self, image_ids, features: np.ndarray) -> None:
        if len(image_ids):
            with self._lock:
                self._index.add_with_ids(self._as_rows(features), np.asarray(image_ids, np.int64))

    def remove(self, image_ids) -> None:
        with self._lock:
            self._index.remove_ids(np.asarray(list(image_ids), np.int64))

    def search(self, queries, k: int | None = None, threshold: float | None = None) -> list[Hit]:
        rows = self._as_rows(queries)
        if k is not None or threshold is None:
            # An image in the true top k is in the top k of the variant that gives its smallest distance.
            hits = best_of_variants(*self._nearest(rows, self.ntotal if k is None else k))
        elif self.spec.metric == "hamming":
            with self._lock:
                _, distances, ids = self._index.range_search(rows, self._hamming_radius(threshold))
            hits = best_of_variants(distances[None, :], ids[None, :])
        else:
            # FAISS has no range search for L1 (nor for every index): search ever larger k until the
            # farthest is beyond.
            wanted = _RANGE_FIRST_K
            while True:
                distances, ids = self._nearest(rows, wanted)
                if ids.shape[1] < wanted or (distances[:, -1] > threshold).all():
                    break
                wanted *= 4
            hits = best_of_variants(distances, ids)
        if threshold is not None:
            hits = [hit for hit in hits if hit.score <= threshold]
        return hits[:k]

    def neighbours(self, features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids): the k nearest stored images of each row of `features`, nearest first; a
        batch of queries at once, as a whole-library pass (duplicate groups) asks."""
        return self._nearest(self._as_rows(features), k)

    def reconstruct(self, image_id: int) -> np.ndarray:
        with self._lock:
            return self._index.reconstruct(image_id)

    def stats(self) -> dict:
        return {"indexed": self.ntotal} | (self.template.stats() if self.template else {})

    def needs_training(self) -> bool:
        return False  # whitening and compression are asked for, never automatic

    def save(self, marker: Marker) -> None:
        header = {"marker": asdict(marker), "template": self.template.token if self.template else None}
        with self._lock:
            write_index_file(_index_path(self.setup), self.spec, header, self._index)

    @classmethod
    def load(cls, setup: IndexSetup) -> tuple["VectorIndex", Marker] | None:
        """None also when the index was made from another template than the saved one."""
        loaded = read_index_file(_index_path(setup), setup.spec, "binary" if setup.spec.kind == "binary" else "float")
        if loaded is None:
            return None
        header, _, index = loaded
        template = _saved_template(setup)
        if header.get("template") != (template.token if template else None):
            return None
        return cls(setup, index, template), Marker(**header["marker"])

    @classmethod
    def build(cls, setup: IndexSetup) -> "VectorIndex":
        index = cls(setup, template=_saved_template(setup))
        index.add(*setup.source.read())
        return index

    @classmethod
    def train(cls, setup: IndexSetup, training: Training) -> "VectorIndex":
        """Learn whitening and/or compression from the stored vectors; neither: back to the exact,
        unwhitened index. The template file is replaced (or removed) last."""
        whiten, compressed = training.whiten, bool(training.compressed)
        _check_training(setup, whiten, compressed)
        ids, vectors = setup.source.read()
        dims = min(setup.spec.dim, WHITENED_DIMS, len(vectors) // 2) if whiten else None
        template = train_template(setup.spec, vectors, dims, compressed) if whiten or compressed else None
        index = cls(setup, template=template)
        index.add(ids, vectors)
        if template is None:
            _template_path(setup).unlink(missing_ok=True)
        else:
            save_template(_template_path(setup), setup.spec, template)
        return index

    def _nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), k per query (fewer when fewer are stored), re-scored exactly if compressed."""
        with self._lock:
            k = min(k, self._index.ntotal)
            if k == 0:
                return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
            searched = min(max(k, RERANK), self._index.ntotal) if self._rescore else k
            found, ids = self._index.search(queries, searched)
        if self._rescore:
            found, ids = self._rescored(queries, ids, k)
        # FAISS gives inner products, largest first; a distance is smaller for nearer. Rounding can lift a
        # unit vector's product with itself just past 1: a distance is never below 0 (a valid cutoff).
        return (np.maximum(1.0 - found, 0.0) if self.spec.metric == "ip" else found), ids

    def _rescored(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best of a compressed index's candidates by their exact inner products, in the index's
        space (whitened, when the template whitens); candidates deleted meanwhile drop out."""
        stored, vectors = self.setup.source.read(np.unique(ids[ids >= 0]).tolist())
        if len(stored) == 0:
            return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
        row = np.searchsorted(stored, ids).clip(0, len(stored) - 1)
        known = (ids >= 0) & (stored[row] == ids)
        exact = np.einsum("qd,qkd->qk", self._transformed(queries), self._transformed(vectors)[row])
        exact = np.where(known, exact, -np.inf)
        best = np.argsort(-exact, axis=1, kind="stable")[:, :k]
        ids = np.where(np.take_along_axis(known, best, 1), np.take_along_axis(ids, best, 1), -1)
        return np.take_along_axis(exact, best, 1), ids

    def _transformed(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, np.float32)
        chain = self._index.chain if isinstance(self._index, faiss.IndexPreTransform) else None
        for step in range(chain.size() if chain is not None else 0):
            vectors = faiss.downcast_VectorTransform(chain.at(step)).apply(vectors)
        return vectors

    def _hamming_radius(self, threshold: float) -> int:
        # FAISS keeps distances strictly below the radius, a C int: no distance exceeds the bit count.
        return int(np.floor(min(threshold, self.spec.dim))) + 1

    def _as_rows(self, features) -> np.ndarray:
        return np.ascontiguousarray(np.atleast_2d(np.asarray(features)), dtype=self.spec.dtype)


def _check_training(setup: IndexSetup, whiten: bool, compressed: bool) -> None:
    name, images = setup.name, setup.source.count()
    if not setup.spec.is_embedding:
        raise InvalidRequest(
            f"the {name} engine's features are not embeddings: nothing to train (whitening and compression "
            "are for embeddings)"
        )
    if whiten and setup.text_queries:
        raise InvalidRequest(f"whitening {name} would move its images away from its text queries")
    if whiten and images < MIN_WHITENING_IMAGES:
        raise InvalidRequest(f"{name} holds {images} images; whitening needs {MIN_WHITENING_IMAGES}")
    if compressed and images < MIN_COMPRESSED_IMAGES:
        raise InvalidRequest(
            f"{name} holds {images} images; a compressed index needs {MIN_COMPRESSED_IMAGES} "
            "(below that, exact search is fast)"
        )


def _empty_index(setup: IndexSetup):
    spec = setup.spec
    if spec.kind == "binary":
        return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(spec.dim))
    metric = {"l1": faiss.METRIC_L1, "l2": faiss.METRIC_L2, "ip": faiss.METRIC_INNER_PRODUCT}[spec.metric]
    return faiss.IndexIDMap2(faiss.IndexFlat(spec.dim, metric))


def best_of_variants(distances: np.ndarray, ids: np.ndarray) -> list[Hit]:
    """Rows of (distance, id) from several query variants -> each id once, at its smallest distance."""
    distances, ids = distances.ravel(), ids.ravel()
    valid = ids >= 0
    distances, ids = distances[valid], ids[valid]
    order = np.lexsort((distances, ids))
    first = np.ones(len(order), bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    best = order[first]
    best = best[np.argsort(distances[best], kind="stable")]
    return [Hit(int(i), float(d), Measure.DISTANCE) for i, d in zip(ids[best], distances[best])]


def _saved_template(setup: IndexSetup) -> Template | None:
    return load_template(_template_path(setup), setup.spec) if setup.spec.is_embedding else None


def _index_path(setup: IndexSetup) -> Path:
    return setup.file(".faiss")


def _template_path(setup: IndexSetup) -> Path:
    return setup.file(".template.faiss")
