"""The core: engines, the feature store and one FAISS index per engine behind one object.

The HTTP service and the CLI are thin layers over `Library`. Writes hold one lock across the store
commit and the index update, so the in-memory indexes always equal the committed store; CPU work
(decoding, feature extraction) happens before that lock is taken.
"""

import fcntl
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .decode import DEFAULT_MAX_PIXELS
from .engines import Engine, TextSearchable, create_engine, decode_for
from .engines.local import TOTAL_KEYPOINTS
from .engines.tags import Tags
from .errors import InvalidRequest, LookalikeError, NotFound
from .index import FeatureIndex, Marker, Neighbour, Template, load_template, save_template, train_template
from .models.runtime import unit_rows
from .point_index import DEFAULT_NPROBE, TRAIN_AT_POINTS, PointIndex
from .store import MAX_IMAGE_ID, FeatureStore, ImageRecord

log = logging.getLogger(__name__)
MIN_TRAINING_POINTS = 10_000  # PQ's 256 centroids per sub-vector need a few thousand points at least
# PCA whitening estimates a covariance matrix: with fewer images than this it learns their noise.
MIN_WHITENING_IMAGES = 1_000
WHITENED_DIMS = 512
MIN_COMPRESSED_IMAGES = 10_000  # PQ's 256 centroids per sub-vector, and sqrt(n) inverted lists


@dataclass(frozen=True)
class Match:
    """A found image: at a `distance` (most engines) or with a count of verified `matches` (local)."""

    image_id: int
    distance: float | None
    file_name: str
    matches: int | None = None


@dataclass(frozen=True)
class QueryExpansion:
    """Alpha query expansion's settings: how many neighbours join the query, and their weights' power."""

    neighbours: int
    alpha: float = 3.0


class Library:
    def __init__(
        self,
        data_dir: Path,
        engines: list[str],
        max_pixels: int = DEFAULT_MAX_PIXELS,
        engine_options: dict[str, dict] | None = None,
        nprobe: int = DEFAULT_NPROBE,
    ):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = _lock_data_dir(self.data_dir)
        self.engine_options = {name: (engine_options or {}).get(name) for name in engines}
        self.engines: dict[str, Engine] = {name: create_engine(name, self.engine_options[name]) for name in engines}
        self.max_pixels = max_pixels
        self.nprobe = nprobe
        # Journal entries a point index being trained will replay: checkpoints must not trim them.
        self._training_from: dict[str, int] = {}
        self.store = FeatureStore(self.data_dir / "store", {n: e.spec for n, e in self.engines.items()})
        (self.data_dir / "indexes").mkdir(exist_ok=True)
        self._write_lock = threading.Lock()
        self._saved_seq: dict[str, int] = {}
        self.templates = {name: self._load_template(name) for name in self.engines}
        self.indexes = {name: self._open_index(name) for name in self.engines}

    @classmethod
    def from_settings(cls, settings) -> "Library":
        return cls(settings.data_dir, settings.engines, settings.max_pixels, settings.engine_options(), settings.nprobe)

    # -- features --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Load every engine's model now (exported or downloaded on first use) rather than on the first image."""
        for engine in self.engines.values():
            engine.prepare()

    def decode(self, data: bytes, engines: list[str]) -> Image.Image:
        return decode_for([self.engines[name] for name in engines], data, self.max_pixels)

    def extract(self, data: bytes, engines: list[str] | None = None) -> dict:
        engines = self._engine_names(engines)
        image = self.decode(data, engines)
        return {name: self.engines[name].extract(image) for name in engines}

    # -- writes ----------------------------------------------------------------------------------

    def add(self, image_id: int, data: bytes, file_name: str = "", engines: list[str] | None = None) -> None:
        """Add one image to `engines` (all by default): all of them or, on any error, none."""
        check_image_id(image_id)
        features = self.extract(data, engines)
        with self._write_lock:
            self.store.add(ImageRecord(image_id, file_name), features)
            for name, feature in features.items():
                self.indexes[name].add([image_id], [feature])

    def add_many(self, items: list[tuple[ImageRecord, dict]]) -> None:
        """Add or replace a batch in one transaction; the bulk indexer's unit of progress."""
        with self._write_lock:
            replaced = self.store.add_many(items)
            for name, index in self.indexes.items():
                if replaced:  # a remove walks the whole index: only for files that changed
                    index.remove(replaced)
                rows = [(r.image_id, f[name]) for r, f in items if name in f]
                if rows:
                    index.add([i for i, _ in rows], [f for _, f in rows])

    def delete(self, image_id: int, engines: list[str] | None = None) -> list[str]:
        check_image_id(image_id)
        engines = self._engine_names(engines)
        with self._write_lock:
            deleted = self.store.delete(image_id, engines)
            for name in deleted:
                self.indexes[name].remove([image_id])
        return deleted

    def delete_many(self, image_ids: list[int]) -> None:
        with self._write_lock:
            self.store.delete_many(image_ids)
            for index in self.indexes.values():
                index.remove(image_ids)

    def id_for_name(self, file_name: str) -> int:
        image_id = self.store.id_for_name(file_name)
        if image_id is None:
            raise NotFound(f"no image has the file name {file_name!r}")
        return image_id

    # -- searches --------------------------------------------------------------------------------

    def similar_to_id(
        self,
        engine: str,
        image_id: int,
        k: int | None = None,
        threshold: float | None = None,
        expansion: QueryExpansion | None = None,
    ):
        """Images like a stored one, itself left out."""
        check_image_id(image_id)
        self._engine_names([engine])
        feature = self.store.feature(engine, image_id)
        if feature is None:
            raise NotFound(f"image {image_id} is not in the {engine} engine")
        variants = [self._expanded(engine, feature, expansion, image_id)] if expansion else [feature]
        matches = self._search(engine, variants, k + 1 if k is not None else None, threshold)
        return [m for m in matches if m.image_id != image_id][:k]

    def similar_to_image(
        self,
        engine: str,
        data: bytes,
        k: int | None = None,
        threshold: float | None = None,
        mirrored: bool = False,
        expansion: QueryExpansion | None = None,
    ):
        """Stored images like an uploaded one; `mirrored` also searches with its mirror image."""
        self._engine_names([engine])
        image = self.decode(data, [engine])
        variants = self.engines[engine].query_variants(image, mirrored)
        if expansion:
            variants = [self._expanded(engine, variant, expansion) for variant in variants]
        return self._search(engine, variants, k, threshold)

    def similar_to_text(self, engine: str, text: str, k: int | None = None, threshold: float | None = None):
        """Stored images that `text` describes, in an engine that embeds text beside images."""
        searcher = self.engine(engine)
        if not isinstance(searcher, TextSearchable):
            texts = [name for name, e in self.engines.items() if isinstance(e, TextSearchable)]
            raise InvalidRequest(f"the {engine} engine has no text search; engines with one: {', '.join(texts)}")
        return self._search(engine, [searcher.embed_text(text)], k, threshold)

    def tags_of_image(self, data: bytes) -> list[str]:
        tagger = self._tagger()
        return tagger.tags(tagger.extract(self.decode(data, [tagger.name])))

    def tags_of_id(self, image_id: int) -> list[str]:
        check_image_id(image_id)
        tagger = self._tagger()
        feature = self.store.feature(tagger.name, image_id)
        if feature is None:
            raise NotFound(f"image {image_id} is not in the tags engine")
        return tagger.tags(feature)

    def search_all(self, data: bytes, k: int | None = None, threshold: float | None = None, mirrored: bool = False):
        """Each engine's answer for one uploaded image, decoded once.

        A distance threshold means nothing to the local engine: with one, it returns every verified match.
        """
        image = self.decode(data, list(self.engines))
        found = {}
        for name, engine in self.engines.items():
            by_matches = engine.spec.kind == "points"
            variants = engine.query_variants(image, mirrored)
            found[name] = self._search(name, variants, k, None if by_matches else threshold, check=not by_matches)
        return found

    def duplicate_groups(self, engine: str = "phash", threshold: float | None = None) -> list[list[Match]]:
        """Every group of images linked by distances within `threshold`, largest group first.

        Each member's distance is to the group's first member (its lowest id), as stored.
        """
        threshold = self.engines[engine].duplicate_threshold if threshold is None else threshold
        ids, features = self.store.read_features(engine)  # ids ascending: LMDB keys are big-endian
        sources, targets = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
        for queries, found, _ in self.indexes[engine].pairs_within(ids, features, threshold):
            sources.append(queries)
            targets.append(found)
        rows = np.searchsorted(ids, np.concatenate(sources)), np.searchsorted(ids, np.concatenate(targets))
        graph = coo_matrix((np.ones(len(rows[0]), np.int8), rows), shape=(len(ids), len(ids)))
        _, labels = connected_components(graph, directed=False)
        groups = []
        for label in np.flatnonzero(np.bincount(labels) > 1):
            members = np.flatnonzero(labels == label)
            distances = np.unpackbits(features[members[0]] ^ features[members], axis=1).sum(axis=1)
            names = self.store.names_for(ids[members].tolist())
            groups.append([Match(int(ids[m]), float(d), n or "") for m, d, n in zip(members, distances, names)])
        return sorted(groups, key=lambda group: (-len(group), group[0].image_id))

    def _expanded(self, engine: str, query: np.ndarray, expansion: QueryExpansion, itself: int | None = None):
        """Alpha query expansion: the query plus its nearest stored vectors, each weighted by its
        similarity to the query to the power alpha, normalised (Radenovic et al., 2018)."""
        if self.engines[engine].spec.metric != "ip":
            raise InvalidRequest(f"query expansion needs an embedding engine, not {engine}")
        found = [n for n in self.indexes[engine].search(query, expansion.neighbours + 1) if n.image_id != itself]
        found = found[: expansion.neighbours]
        if not found:
            return query
        ids, vectors = self.store.read_features(engine, [n.image_id for n in found])
        similarity = {n.image_id: 1.0 - n.distance for n in found}
        weights = np.clip(np.array([similarity[i] for i in ids.tolist()], np.float32), 0.0, None) ** expansion.alpha
        expanded = query + weights @ vectors
        return unit_rows(expanded[None])[0]

    def _tagger(self) -> Tags:
        if "tags" not in self.engines:
            raise NotFound(f"the tags engine is not served; served engines: {', '.join(self.engines)}")
        return self.engines["tags"]

    def _search(self, engine: str, variants: list, k: int | None, threshold: float | None, check=True) -> list[Match]:
        """The k best, or all within `threshold`: a distance, or for the local engine a minimum of matches."""
        if check and (k is None) == (threshold is None):
            raise InvalidRequest("give exactly one of k and distance_threshold")
        index = self.indexes[engine]
        if isinstance(index, PointIndex):
            found: list[Neighbour] = index.search(variants, k, min_matches=threshold or 0)
        else:
            found = index.search(variants, k) if k is not None else index.search_within(variants, threshold)
        names = self.store.names_for([n.image_id for n in found])
        return [Match(n.image_id, n.distance, name or "", n.matches) for n, name in zip(found, names)]

    # -- training: the point index, and embeddings' whitening and compression -------------------

    def train(self, engine: str, force: bool = False) -> bool:
        """Train a point engine's compressed index when it has grown enough (or now, with `force`)."""
        self._engine_names([engine])
        index = self.indexes[engine]
        if not isinstance(index, PointIndex):
            raise InvalidRequest(f"the {engine} engine has no point index: nothing to train")
        if not (force or index.needs_training()):
            return False
        if index.points < MIN_TRAINING_POINTS:
            raise InvalidRequest(
                f"{engine} holds {index.points} descriptors; training needs {MIN_TRAINING_POINTS} "
                "(below that, exact search is fast)"
            )
        started = time.perf_counter()
        trained = self._rebuild_beside(engine, lambda: self._build_trained(engine, index.points))
        log.info(
            "%s: trained on %d descriptors in %.1f s", engine, trained.trained_points, time.perf_counter() - started
        )
        return True

    def train_vectors(self, engine: str, whiten: bool, compressed: bool) -> Template | None:
        """Learn PCA whitening and/or a compressed (IVF-PQ) index from an embedding engine's stored
        vectors, and rebuild its index with them; neither: back to the exact, unwhitened index."""
        self._engine_names([engine])
        spec, images = self.engines[engine].spec, self.store.count(engine)
        if spec.metric != "ip":
            raise InvalidRequest(f"the {engine} engine's features are not embeddings: nothing to whiten or compress")
        if whiten and isinstance(self.engines[engine], TextSearchable):
            raise InvalidRequest(f"whitening {engine} would move its images away from its text queries")
        if whiten and images < MIN_WHITENING_IMAGES:
            raise InvalidRequest(f"{engine} holds {images} images; whitening needs {MIN_WHITENING_IMAGES}")
        if compressed and images < MIN_COMPRESSED_IMAGES:
            raise InvalidRequest(
                f"{engine} holds {images} images; a compressed index needs {MIN_COMPRESSED_IMAGES} "
                "(below that, exact search is fast)"
            )

        def build() -> FeatureIndex:
            ids, vectors = self.store.read_features(engine)
            dims = min(spec.dim, WHITENED_DIMS, len(vectors) // 2) if whiten else None
            template = train_template(spec, vectors, dims, compressed) if whiten or compressed else None
            index = FeatureIndex(spec, template=template, fetch=self._vector_fetch(engine))
            index.set_nprobe(self.nprobe)
            index.add(ids, vectors)
            return index

        started = time.perf_counter()
        self._rebuild_beside(engine, build)
        self.checkpoint()  # the template and the index made from it land on disk together
        log.info("%s: whitened %s, compressed %s in %.1f s", engine, whiten, compressed, time.perf_counter() - started)
        return self.templates[engine]

    def _rebuild_beside(self, engine: str, build):
        """Build a new index from a snapshot of the store while searches and writes go on; the journal
        then replays what changed meanwhile, and the new index takes over."""
        with self._write_lock:
            seq = self._training_from[engine] = self.store.journal_seq(engine)
        try:
            rebuilt = build()
            with self._write_lock:
                self._replay(engine, rebuilt, self.store.journal_since(engine, seq))
                if isinstance(rebuilt, FeatureIndex):
                    self._swap_template(engine, rebuilt)
                self.indexes[engine] = rebuilt
                self._saved_seq.pop(engine, None)
        finally:
            self._training_from.pop(engine, None)
        return rebuilt

    def due_for_training(self) -> list[str]:
        """Point engines whose index has outgrown its form: flat past its limit, or trained on too few."""
        return [
            name for name, index in self.indexes.items() if isinstance(index, PointIndex) and index.needs_training()
        ]

    def maintain(self) -> None:
        for name in self.due_for_training():
            self.train(name)

    def _build_trained(self, engine: str, points: int) -> PointIndex:
        spec, (verify, fetch) = self.engines[engine].spec, self._point_callbacks(engine)
        trained = PointIndex.train_from(spec, verify, fetch, self.store.feature_ids(engine), points)
        trained.set_nprobe(self.nprobe)
        return trained

    def _vector_fetch(self, engine: str):
        return lambda ids: self.store.read_features(engine, ids)

    def _point_callbacks(self, engine: str):
        return self.engines[engine].verify, lambda ids: self.store.read_features(engine, ids)

    # -- persistence -----------------------------------------------------------------------------

    def checkpoint(self) -> None:
        """Save every index that changed since it was saved, then trim the journal it covers."""
        for name in self.engines:
            with self._write_lock:
                seq = self.store.journal_seq(name)
                if seq == self._saved_seq.get(name):
                    continue
                self.indexes[name].save(self._index_path(name), Marker(self.store.uuid, seq))
            self._saved_seq[name] = seq
            self.store.trim_journal(name, min(seq, self._training_from.get(name, seq)))

    def close(self) -> None:
        self.checkpoint()
        self.store.close()
        self._lock_file.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def stats(self) -> dict:
        return {
            "images": self.store.count(),
            "store_bytes": self.store.disk_bytes(),
            "engines": {name: self._index_stats(name, index) for name, index in self.indexes.items()},
        }

    def _index_stats(self, name: str, index) -> dict:
        found = {"features": self.store.count(name), "indexed": index.ntotal}
        if isinstance(index, PointIndex):
            found |= {"descriptors": index.points, "trained_on": index.trained_points}
        elif (template := self.templates.get(name)) is not None:
            found |= {"whitened_dims": template.whitened_dims, "compressed": template.compressed}
            found |= {"trained_on": template.trained_on}
        return found

    def _open_index(self, name: str) -> FeatureIndex | PointIndex:
        spec = self.engines[name].spec
        path = self._index_path(name)
        if spec.kind == "points":
            loaded = PointIndex.load(path, spec, *self._point_callbacks(name))
        else:
            loaded = FeatureIndex.load(path, spec, self.templates[name], self._vector_fetch(name))
        if loaded is not None:
            index, marker = loaded
            touched = self.store.journal_since(name, marker.seq) if marker.store_uuid == self.store.uuid else None
            if touched is not None:
                if not touched:
                    self._saved_seq[name] = marker.seq
                else:
                    log.info("%s index: catching up %d changed images from the journal", name, len(touched))
                    self._replay(name, index, touched)
                index.set_nprobe(self.nprobe)
                return index
        started = time.perf_counter()
        if spec.kind != "points":
            index = FeatureIndex(spec, template=self.templates[name], fetch=self._vector_fetch(name))
            index.set_nprobe(self.nprobe)
            index.add(*self.store.read_features(name))
        elif (estimate := self.store.count(name) * TOTAL_KEYPOINTS) >= TRAIN_AT_POINTS:
            index = self._build_trained(name, estimate)
        else:
            index = PointIndex(spec, *self._point_callbacks(name))
            index.add(*self.store.read_features(name))
        if index.ntotal:
            log.warning(
                "%s index: missing or out of step with the store; rebuilt %d features in %.1f s",
                name,
                index.ntotal,
                time.perf_counter() - started,
            )
        return index

    def _replay(self, name: str, index, touched: set[int] | None) -> None:
        """Bring `index` up to the store for the images the journal says were touched."""
        if touched is None:  # cannot happen while _training_from holds the journal back
            raise RuntimeError(f"{name}: the journal no longer covers the changes to replay")
        index.remove(touched)
        index.add(*self.store.read_features(name, sorted(touched)))

    def _index_path(self, name: str) -> Path:
        return self.data_dir / "indexes" / f"{name}.faiss"

    def _template_path(self, name: str) -> Path:
        return self.data_dir / "indexes" / f"{name}.template.faiss"

    def _load_template(self, name: str) -> Template | None:
        spec = self.engines[name].spec
        return load_template(self._template_path(name), spec) if spec.kind == "float" else None

    def _swap_template(self, name: str, index: FeatureIndex) -> None:
        """Make `index`'s template the engine's, on disk first: an index file made from an older
        template no longer matches and is rebuilt from the raw vectors if a crash comes first."""
        template = index.template
        if template is None:
            self._template_path(name).unlink(missing_ok=True)
        else:
            save_template(self._template_path(name), self.engines[name].spec, template)
        self.templates[name] = template

    def engine(self, name: str) -> Engine:
        return self.engines[self._engine_names([name])[0]]

    def _engine_names(self, engines: list[str] | None) -> list[str]:
        if engines is None:
            return list(self.engines)
        unknown = [name for name in engines if name not in self.engines]
        if unknown:
            raise NotFound(f"engine {unknown[0]!r} is not served; served engines: {', '.join(self.engines)}")
        return engines


def check_image_id(image_id: int) -> None:
    if not 0 <= image_id <= MAX_IMAGE_ID:
        raise InvalidRequest(f"image_id must be between 0 and {MAX_IMAGE_ID}, got {image_id}")


def _lock_data_dir(data_dir: Path):
    """One process at a time owns a data directory: another's writes would not reach our indexes."""
    lock_file = open(data_dir / "lock", "a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        owner = lock_file.read().strip() or "another process"
        lock_file.close()
        raise LookalikeError(f"{data_dir} is in use by lookalike process {owner}; stop it first") from None
    lock_file.truncate(0)
    lock_file.write(str(os.getpid()))
    lock_file.flush()
    return lock_file
