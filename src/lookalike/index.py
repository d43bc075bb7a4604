"""A FAISS index over one engine's features, derived from the store and saved with a marker of it.

Binary features go into a Hamming `IndexBinaryFlat`, float features into a flat index with the
engine's metric; both wrapped in an id map so FAISS ids are image ids. The file starts with a JSON
header naming the store (uuid) and the journal sequence number the index reflects, so an index that
does not match the store is caught up from the journal or rebuilt, never served stale.

A float engine's index can instead be made from a trained template (`train_template`): PCA whitening
and/or a compressed IVF-PQ index, learned from the library. The store keeps the raw vectors and the
template's transform runs inside FAISS on every add and every query, so a vector is whitened exactly
once however often the index is rebuilt.
"""

import json
import math
import os
import struct
import threading
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np

from .engines import FeatureSpec

# Version 2 added the `extra` section.
_MAGIC = b"LOOKALIKE-INDEX2\n"
_LENGTH = struct.Struct(">Q")
# Neighbours fetched first when a float metric has no native range search; grown 4x until enough.
_RANGE_FIRST_K = 64
# Candidates a compressed index re-scores exactly with the stored vectors: at 1M images this lifted
# IVF-PQ's recall@10 from 0.52 to 0.99 (docs/benchmarks.md, 7f).
RERANK = 100


@dataclass(frozen=True)
class Marker:
    """Which store, and which point of its journal, an index reflects."""

    store_uuid: str
    seq: int


@dataclass(frozen=True)
class Neighbour:
    """A found image: at a `distance` (smaller is nearer) or with a count of verified `matches`."""

    image_id: int
    distance: float | None = None
    matches: int | None = None


@dataclass(frozen=True)
class Template:
    """A trained, empty index that a float engine's index is built from; `token` names this training."""

    token: str
    whitened_dims: int | None
    compressed: bool
    trained_on: int
    index: object

    def fresh(self):
        return _copy(self.index)


class FeatureIndex:
    def __init__(self, spec: FeatureSpec, index=None, template: Template | None = None, fetch=None):
        """`fetch(ids) -> (ids, vectors)` reads stored vectors: a compressed index re-scores with them."""
        self.spec = spec
        self.template = template
        self._index = index if index is not None else template.fresh() if template else _empty_index(spec)
        self._fetch = fetch if template is not None and template.compressed else None
        # FAISS indexes are not safe for a search concurrent with an add or remove.
        self._lock = threading.Lock()

    @property
    def ntotal(self) -> int:
        return self._index.ntotal

    def add(self, ids: np.ndarray, features: np.ndarray) -> None:
        if len(ids):
            with self._lock:
                self._index.add_with_ids(self._as_rows(features), np.asarray(ids, np.int64))

    def remove(self, ids) -> None:
        with self._lock:
            self._index.remove_ids(np.asarray(list(ids), np.int64))

    def search(self, variants: np.ndarray, k: int) -> list[Neighbour]:
        """The k nearest images to any of the query variants, each at its smallest distance."""
        distances, ids = self._nearest(self._as_rows(variants), k)
        # An image in the true top k is in the top k of the variant that gives its smallest distance.
        return _merge(distances, ids)[:k]

    def search_within(self, variants: np.ndarray, threshold: float) -> list[Neighbour]:
        """Every image within `threshold` (inclusive) of any query variant, nearest first."""
        queries = self._as_rows(variants)
        if self.spec.metric == "hamming":
            with self._lock:
                limits, distances, ids = self._index.range_search(queries, self._hamming_radius(threshold))
            return _merge(distances[None, :], ids[None, :])
        # FAISS has no range search for L1 (nor for every index): search ever larger k until the
        # farthest is beyond.
        k = _RANGE_FIRST_K
        while True:
            distances, ids = self._nearest(queries, k)
            if ids.shape[1] < k or (distances[:, -1] > threshold).all():
                break
            k *= 4
        return [n for n in _merge(distances, ids) if n.distance <= threshold]

    def pairs_within(self, ids: np.ndarray, features: np.ndarray, threshold: float, batch: int = 4096):
        """(query id, found id, distance) for every stored image within `threshold` of each query.

        Binary indexes only: a range search per batch of queries, the basis of near-duplicate groups.
        """
        if self.spec.kind != "binary":
            raise ValueError("pairs_within needs a binary feature")
        for start in range(0, len(ids), batch):
            with self._lock:
                limits, distances, found = self._index.range_search(
                    self._as_rows(features[start : start + batch]), self._hamming_radius(threshold)
                )
            queries = np.repeat(ids[start : start + batch], np.diff(limits).astype(np.int64))
            yield queries, found, distances

    def reconstruct(self, image_id: int) -> np.ndarray:
        with self._lock:
            return self._index.reconstruct(image_id)

    def set_nprobe(self, nprobe: int) -> None:
        if self.spec.kind == "float" and (ivf := faiss.try_extract_index_ivf(self._index)) is not None:
            ivf.nprobe = nprobe

    def save(self, path: Path, marker: Marker) -> None:
        token = self.template.token if self.template else None
        header = {"marker": asdict(marker), "spec": asdict(self.spec), "template": token}
        with self._lock:
            write_index_file(path, header, self._index)

    @classmethod
    def load(
        cls, path: Path, spec: FeatureSpec, template: Template | None = None, fetch=None
    ) -> tuple["FeatureIndex", Marker] | None:
        """The saved index and its marker; None if missing, unreadable, of another feature spec, or
        made from another template than `template`."""
        loaded = read_index_file(path, spec)
        if loaded is None:
            return None
        header, _, index = loaded
        if header.get("template") != (template.token if template else None):
            return None
        return cls(spec, index, template, fetch), Marker(**header["marker"])

    def _nearest(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids), k per query (fewer when fewer are stored), re-scored exactly if compressed."""
        with self._lock:
            k = min(k, self._index.ntotal)
            if k == 0:
                return np.empty((len(queries), 0), np.float32), np.empty((len(queries), 0), np.int64)
            searched = min(max(k, RERANK), self._index.ntotal) if self._fetch else k
            similarities, ids = self._index.search(queries, searched)
        if self._fetch:
            similarities, ids = self._rescored(queries, ids, k)
        return self._as_distances(similarities), ids

    def _rescored(self, queries: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best of a compressed index's candidates by their exact inner products, in the index's
        space (whitened, when the template whitens); candidates deleted meanwhile drop out."""
        stored, vectors = self._fetch(np.unique(ids[ids >= 0]).tolist())
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

    def _as_distances(self, found: np.ndarray) -> np.ndarray:
        # FAISS gives inner products, largest first; everywhere else smaller is nearer.
        return 1.0 - found if self.spec.metric == "ip" else found

    def _hamming_radius(self, threshold: float) -> int:
        # FAISS keeps distances strictly below the radius, a C int: no distance exceeds the bit count.
        return int(np.floor(min(threshold, self.spec.dim))) + 1

    def _as_rows(self, features: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.atleast_2d(features), dtype=self.spec.dtype)


def _empty_index(spec: FeatureSpec):
    if spec.kind == "binary":
        return faiss.IndexBinaryIDMap2(faiss.IndexBinaryFlat(spec.dim))
    metric = {"l1": faiss.METRIC_L1, "ip": faiss.METRIC_INNER_PRODUCT}[spec.metric]
    return faiss.IndexIDMap2(faiss.IndexFlat(spec.dim, metric))


def train_template(spec: FeatureSpec, vectors: np.ndarray, whitened_dims: int | None, compressed: bool) -> Template:
    """Learn PCA whitening (to `whitened_dims`, then re-normalised) and/or an IVF-PQ index from `vectors`.

    Inner-product engines only: their vectors are unit length, as whitened ones are made again.
    """
    if spec.metric != "ip":
        raise ValueError(f"only inner-product features can be whitened or compressed, not {spec.metric}")
    dims = whitened_dims or spec.dim
    if compressed:
        inner = _compressed(dims, lists=max(1, int(math.sqrt(len(vectors)))))
    else:
        inner = faiss.IndexIDMap2(faiss.IndexFlatIP(dims))
    index = faiss.IndexPreTransform(inner)
    if whitened_dims:
        index.prepend_transform(faiss.NormalizationTransform(whitened_dims, 2.0))
        whitening = faiss.PCAMatrix(spec.dim, whitened_dims, -0.5)
        # Whitening divides by the square root of each eigenvalue: keep the tiniest from blowing up.
        whitening.epsilon = 1e-6
        index.prepend_transform(whitening)
    index.train(np.ascontiguousarray(vectors, np.float32))
    # The copy owns its parts outright (the Python wrappers above would otherwise have to outlive it).
    return Template(uuid.uuid4().hex, whitened_dims, compressed, len(vectors), _copy(index))


def _compressed(dims: int, lists: int):
    """IVF with 8-bit PQ codes of 4 (for wide vectors 8) dimensions each, 1/16 or 1/32 of the flat size;
    where neither divides the vector (tags: 998), 8-bit scalar codes, 1/4."""
    quantizer = faiss.IndexFlatIP(dims)
    for width, most in ((4, 128), (8, dims)):
        if dims % width == 0 and dims // width <= most:
            return faiss.IndexIVFPQ(quantizer, dims, lists, dims // width, 8, faiss.METRIC_INNER_PRODUCT)
    return faiss.IndexIVFScalarQuantizer(
        quantizer, dims, lists, faiss.ScalarQuantizer.QT_8bit, faiss.METRIC_INNER_PRODUCT
    )


def _copy(index):
    # clone_index cannot copy a NormalizationTransform; a serialised round trip copies anything.
    return faiss.deserialize_index(faiss.serialize_index(index))


def save_template(path: Path, spec: FeatureSpec, template: Template) -> None:
    header = {
        "spec": asdict(spec),
        "token": template.token,
        "whitened_dims": template.whitened_dims,
        "compressed": template.compressed,
        "trained_on": template.trained_on,
    }
    write_index_file(path, header, template.index)


def load_template(path: Path, spec: FeatureSpec) -> Template | None:
    loaded = read_index_file(path, spec)
    if loaded is None:
        return None
    header, _, index = loaded
    return Template(header["token"], header["whitened_dims"], header["compressed"], header["trained_on"], index)


def _merge(distances: np.ndarray, ids: np.ndarray) -> list[Neighbour]:
    """Rows of (distance, id) from several query variants -> each id once, at its smallest distance."""
    distances, ids = distances.ravel(), ids.ravel()
    valid = ids >= 0
    distances, ids = distances[valid], ids[valid]
    order = np.lexsort((distances, ids))
    first = np.ones(len(order), bool)
    first[1:] = ids[order][1:] != ids[order][:-1]
    best = order[first]
    best = best[np.argsort(distances[best], kind="stable")]
    return [Neighbour(int(i), float(d)) for i, d in zip(ids[best], distances[best])]


def write_index_file(path: Path, header: dict, index, extra: bytes = b"") -> None:
    """Header, `extra` bytes, then the FAISS index; written atomically (temp file, fsync, rename, fsync dir)."""
    header_bytes = json.dumps(header).encode()
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as file:
        file.write(_MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes + _LENGTH.pack(len(extra)) + extra)
        writer = faiss.PyCallbackIOWriter(file.write)
        if isinstance(index, faiss.IndexBinary):
            faiss.write_index_binary(index, writer)
        else:
            faiss.write_index(index, writer)
        del writer  # flushes its buffer into the file
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)
    _fsync_dir(path.parent)


def read_index_file(path: Path, spec: FeatureSpec) -> tuple[dict, bytes, object] | None:
    """(header, extra bytes, FAISS index); None if missing, unreadable or made for another feature spec."""
    try:
        with open(path, "rb") as file:
            if file.read(len(_MAGIC)) != _MAGIC:
                return None
            header = json.loads(file.read(_LENGTH.unpack(file.read(_LENGTH.size))[0]))
            if FeatureSpec(**header["spec"]) != spec:
                return None
            extra = file.read(_LENGTH.unpack(file.read(_LENGTH.size))[0])
            reader = faiss.PyCallbackIOReader(file.read)
            index = faiss.read_index_binary(reader) if spec.kind == "binary" else faiss.read_index(reader)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, struct.error):
        return None
    return header, extra, index


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
