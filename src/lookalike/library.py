"""The core: engines, the feature store and their indexes behind one object.

The HTTP service and the CLI are thin layers over `Library`. It owns the data directory (one process at
a time), the write path and the dispatch of searches; `IndexManager` keeps the indexes equal to the
store. Writes hold one lock across the store commit and the index update, so the in-memory indexes
always equal the committed store; CPU work (decoding, feature extraction) happens before that lock.
"""

import hashlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .decode import DEFAULT_MAX_PIXELS, UNLIMITED, DecodeBudget
from .engines import Engine, EngineOptions, TextSearchable, create_engine, decode_for, decode_for_engine
from .errors import InvalidRequest, NotFound
from .indexes import DEFAULT_NPROBE, Hit, IndexSetup, Matches, Measure, Training
from .indexes.manager import IndexManager
from .indexes.milvus import MilvusAddress
from .locks import lock_data_dir
from .store import FeatureStore, ImageRecord, Pending, check_file_name, check_image_id
from .thumbnails import THUMBNAIL, make_thumbnail

log = logging.getLogger(__name__)


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
        engine_options: dict[str, EngineOptions | dict] | None = None,
        nprobe: int = DEFAULT_NPROBE,
        decode_budget: DecodeBudget = UNLIMITED,
        milvus: MilvusAddress | None = None,  # None: the indexes are FAISS files in the data directory
    ):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_file = lock_data_dir(self.data_dir)
        try:
            self.engines: dict[str, Engine] = {
                name: create_engine(name, (engine_options or {}).get(name)) for name in engines
            }
            self.max_pixels = max_pixels
            self.decode_budget = decode_budget
            # Extraction is CPU work: more at once than cores gains nothing, and each takes memory (SIFT's
            # pyramids of a 1024-px image, about 230 MB), so requests past the core count wait their turn.
            self.extracting = threading.BoundedSemaphore(os.cpu_count() or 1)
            self._searching = ThreadPoolExecutor(max(1, len(self.engines)), thread_name_prefix="search")
            self.store = FeatureStore(self.data_dir / "store", {n: e.spec for n, e in self.engines.items()})
            self._write_lock = threading.Lock()
            (self.data_dir / "indexes").mkdir(exist_ok=True)
            self.milvus = milvus.connect(self.data_dir / "indexes") if milvus else None
            self.indexes = IndexManager(self.store, self._index_setups(nprobe), self._write_lock)
        except BaseException:  # a refused open leaves the directory free
            for opened in (getattr(self, "milvus", None), getattr(self, "store", None), self._lock_file):
                if opened is not None:
                    opened.close()
            raise

    @classmethod
    def from_settings(cls, settings) -> "Library":
        return cls(
            settings.data_dir,
            settings.engines,
            settings.max_pixels,
            settings.engine_options(),
            settings.nprobe,
            DecodeBudget(settings.decode_budget_pixels, settings.decode_wait_seconds),
            settings.milvus_address(),
        )

    def _index_setups(self, nprobe: int) -> dict[str, IndexSetup]:
        return {
            name: IndexSetup(
                self.store.source(name),
                self.data_dir / "indexes" / name,
                nprobe,
                verify=engine.verify_all,
                text_queries=isinstance(engine, TextSearchable),
                milvus=self.milvus,
            )
            for name, engine in self.engines.items()
        }

    # -- features --------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Load every engine's model now (exported or downloaded on first use) rather than on the first image."""
        for engine in self.engines.values():
            engine.prepare()

    def decode(self, data: bytes, engines: list[str], thumbnail: bool = False) -> dict[str, Image.Image]:
        """Each engine's image, the same whichever engines share the call (`decode.decode_views`), and
        with `thumbnail` the view a thumbnail is made from (as THUMBNAIL)."""
        chosen = [self.engines[name] for name in engines]
        return decode_for(chosen, data, self.max_pixels, self.decode_budget, thumbnail)

    def extract(self, data: bytes, engines: list[str] | None = None) -> dict:
        engines = self._engine_names(engines)
        images = self.decode(data, engines)
        with self.extracting:
            return {name: self.engines[name].extract(images[name]) for name in engines}

    # -- writes ----------------------------------------------------------------------------------

    def add(
        self,
        image_id: int,
        data: bytes,
        file_name: str = "",
        engines: list[str] | None = None,
        defer_slow: bool = False,
    ) -> None:
        """Add one image to `engines` (all by default): all of them or, on any error, none. With
        `defer_slow`, the slow engines' features are owed to the backlog, made by the background pass
        (`background.py`) from the bytes kept with it, and the others are searchable at once."""
        check_image_id(image_id)
        check_file_name(file_name)
        engines = self._engine_names(engines)
        deferred = self.deferrable(engines) if defer_slow else ()
        made = [name for name in engines if name not in deferred]
        images = self.decode(data, made, thumbnail=True)
        with self.extracting:
            features = {name: self.engines[name].extract(images[name]) for name in made}
            thumbnail = make_thumbnail(data, images[THUMBNAIL]).to_bytes()
        record = ImageRecord(image_id, file_name, digest=hashlib.sha256(data).digest(), thumbnail=thumbnail)
        with self._write_lock:
            self.store.add(record, features, deferred, data)
            for name, feature in features.items():
                self.indexes[name].add([image_id], [feature])

    @property
    def slow_engines(self) -> list[str]:
        return [name for name, engine in self.engines.items() if engine.slow]

    def deferrable(self, engines: list[str]) -> tuple[str, ...]:
        """Of `engines`, the slow ones a two-pass add leaves for later: none where all are (none would read it now)."""
        slow = tuple(name for name in engines if self.engines[name].slow)
        return slow if len(slow) < len(engines) else ()

    def add_many(self, items: list[tuple[ImageRecord, dict]], deferred: tuple[str, ...] = ()) -> None:
        """Add or replace a batch in one transaction, the `deferred` engines' features owed to the
        backlog (made from each record's file); the bulk indexer's unit of progress."""
        with self._write_lock:
            replaced = self.store.add_many(items, deferred)
            for name, index in self.indexes.items():
                if replaced:  # a remove walks the whole index: only for files that changed
                    index.remove(replaced)
                rows = [(r.image_id, f[name]) for r, f in items if name in f]
                if rows:
                    index.add([i for i, _ in rows], [f for _, f in rows])

    def complete(self, items: list[tuple[Pending, dict]]) -> None:
        """Write features the backlog owed (`FeatureStore.complete`) and index them."""
        with self._write_lock:
            written = self.store.complete(items)
            for name, index in self.indexes.items():
                rows = [(image_id, made[name]) for image_id, made in written.items() if name in made]
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
        check_file_name(file_name)
        image_id = self.store.id_for_name(file_name) if file_name else None
        if image_id is None:
            raise NotFound(f"no image has the file name {file_name!r}")
        return image_id

    # -- searches --------------------------------------------------------------------------------
    # Each search returns at most `k` hits (all, if None) scoring at least as well as `threshold` (all, if
    # None), in the engine's measure: a distance, or a number of matches (local), or a text relevance.

    def measure(self, engine: str) -> Measure:
        return self.indexes[self._engine_names([engine])[0]].measure

    def similar_to_id(
        self,
        engine: str,
        image_id: int,
        k: int | None = None,
        threshold: float | None = None,
        expansion: QueryExpansion | None = None,
    ) -> list[Hit]:
        """Images like a stored one, itself left out."""
        feature = self.feature_of_id(engine, image_id)
        query = self._expanded(engine, feature, expansion, image_id) if expansion else feature
        hits = self._search(engine, [query], k + 1 if k is not None else None, threshold)
        return [hit for hit in hits if hit.image_id != image_id][:k]

    def similar_to_image(
        self,
        engine: str,
        data: bytes,
        k: int | None = None,
        threshold: float | None = None,
        mirrored: bool = False,
        expansion: QueryExpansion | None = None,
    ) -> list[Hit]:
        """Stored images like an uploaded one; `mirrored` also searches with its mirror image."""
        self._engine_names([engine])
        image = decode_for_engine(self.engines[engine], data, self.max_pixels, self.decode_budget)
        with self.extracting:
            variants = self.engines[engine].query_variants(image, mirrored)
        if expansion:
            variants = [self._expanded(engine, variant, expansion) for variant in variants]
        return self._search(engine, variants, k, threshold)

    def similar_to_text(
        self,
        engine: str,
        text: str,
        k: int | None = None,
        threshold: float | None = None,
        expansion: QueryExpansion | None = None,
    ) -> list[Hit]:
        """Stored images that `text` describes, in an engine that embeds text beside images."""
        searcher = self.engine(engine)
        if not isinstance(searcher, TextSearchable):
            texts = [name for name, e in self.engines.items() if isinstance(e, TextSearchable)]
            raise InvalidRequest(f"the {engine} engine has no text search; engines with one: {', '.join(texts)}")
        query = searcher.embed_text(text)
        return self._search(engine, [self._expanded(engine, query, expansion) if expansion else query], k, threshold)

    def search_all(self, images: dict[str, Image.Image], k: int | None = None) -> dict[str, list[Hit]]:
        """Each engine's `k` best for one uploaded image, as `decode` gave it to each, the engines side
        by side."""
        engines = self._engine_names(list(images))

        def search(name: str) -> list[Hit]:
            with self.extracting:
                variants = self.engines[name].query_variants(images[name])
            return self._search(name, variants, k, None)

        return dict(zip(engines, self._searching.map(search, engines)))

    def mirror_matches(self, engine: str, image: Image.Image, image_ids: list[int]) -> dict[int, Matches]:
        """A points engine's matches between the mirror image of an uploaded one (as `decode` gave it
        to the engine) and each of the stored `image_ids`: what its index, searching with the image as
        it is, cannot find."""
        with self.extracting:
            variants = self.engine(engine).query_variants(ImageOps.mirror(image))
        return self.verified_matches(engine, variants, image_ids)

    def verified_matches(self, engine: str, variants: list, image_ids: list[int]) -> dict[int, Matches]:
        """A points engine's best matches of any of a query's `variants` with each of the stored
        `image_ids` (those with any)."""
        points = self.engine(engine)
        ids, stored = self.store.read_features(points.name, image_ids)
        found = zip(ids.tolist(), points.verify_variants(variants, list(stored)))
        return {image_id: matches for image_id, matches in found if matches.count}

    def search_all_text(self, text: str, k: int | None = None) -> dict[str, list[Hit]]:
        """Each text engine's answer to `text`, of those that take it (tags take only tag names)."""
        found = {}
        for name, engine in self.engines.items():
            if isinstance(engine, TextSearchable):
                try:
                    found[name] = self.similar_to_text(name, text, k)
                except InvalidRequest:
                    continue
        if not found:
            raise InvalidRequest(f"no engine takes the text {text!r}")
        return found

    def feature_of_image(self, engine: str, data: bytes):
        """`engine`'s feature of an uploaded image, which is not stored."""
        extractor = self.engine(engine)
        image = decode_for_engine(extractor, data, self.max_pixels, self.decode_budget)
        with self.extracting:
            return extractor.extract(image)

    def feature_of_id(self, engine: str, image_id: int):
        """`engine`'s stored feature of an image."""
        check_image_id(image_id)
        feature = self.store.feature(self.engine(engine).name, image_id)
        if feature is None and engine in self.store.pending_of([image_id]).get(image_id, ()):
            raise NotFound(f"image {image_id} has no {engine} feature yet: the background pass makes it (GET /jobs)")
        if feature is None:
            raise NotFound(f"image {image_id} is not in the {engine} engine")
        return feature

    def tags_of_image(self, data: bytes) -> list[str]:
        tagger = self._tagger()
        return tagger.tags(self.feature_of_image(tagger.name, data))

    def tags_of_id(self, image_id: int) -> list[str]:
        tagger = self._tagger()
        return tagger.tags(self.feature_of_id(tagger.name, image_id))

    def _search(self, engine: str, queries: list, k: int | None, threshold: float | None) -> list[Hit]:
        hits = self.indexes[engine].search(queries, k, threshold)
        names = self.store.names_for([hit.image_id for hit in hits])
        # An image deleted since the index answered has no record now: it is not a result.
        return [replace(hit, file_name=name) for hit, name in zip(hits, names) if name is not None]

    def _expanded(self, engine: str, query: np.ndarray, expansion: QueryExpansion, itself: int | None = None):
        """Alpha query expansion: the query plus its nearest stored vectors, each weighted by its
        similarity to the query to the power alpha, normalised (Radenovic et al., 2018)."""
        if not self.engines[engine].spec.is_embedding:
            raise InvalidRequest(f"query expansion needs an embedding engine, not {engine}")
        found = self.indexes[engine].search([query], expansion.neighbours + 1)
        found = [hit for hit in found if hit.image_id != itself][: expansion.neighbours]
        if not found:
            return query
        ids, vectors = self.store.read_features(engine, [hit.image_id for hit in found])
        similarity = {hit.image_id: 1.0 - hit.score for hit in found}  # an embedding's distance is 1 - cosine
        weights = np.clip(np.array([similarity[i] for i in ids.tolist()], np.float32), 0.0, None) ** expansion.alpha
        expanded = query + weights @ vectors
        return (expanded / max(float(np.linalg.norm(expanded)), 1e-12)).astype(np.float32)

    def _tagger(self):
        if "tags" not in self.engines:
            raise NotFound(f"the tags engine is not served; served engines: {', '.join(self.engines)}")
        return self.engines["tags"]

    # -- indexes ---------------------------------------------------------------------------------

    def train(self, engine: str, whiten: bool = False, compressed: bool | None = None) -> dict:
        """Train `engine`'s index now (see `indexes.Training`); returns the trained index's stats."""
        self._engine_names([engine])
        return self.indexes.train(engine, Training(whiten, compressed)).stats()

    def due_for_training(self) -> list[str]:
        return self.indexes.due_for_training()

    def maintain(self) -> None:
        """Train every index that has outgrown its form: the service and `index` call this now and then."""
        for name in self.due_for_training():
            self.indexes.train(name, Training())

    def checkpoint(self) -> None:
        self.indexes.checkpoint()

    def stats(self) -> dict:
        return {
            "images": self.store.count(),
            "backlog": self.store.backlog(),
            "engines": {name: self.indexes.stats(name) | {"model": e.model} for name, e in self.engines.items()},
        }

    def close(self) -> None:
        try:
            self.checkpoint()
        except OSError as exc:  # a full disk: the journal still holds what the unsaved indexes lack
            log.warning("indexes not saved (%s); they catch up from the store's journal at the next start", exc)
        finally:
            self._searching.shutdown()
            if self.milvus:
                self.milvus.close()
            self.store.close()
            self._lock_file.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def engine(self, name: str) -> Engine:
        return self.engines[self._engine_names([name])[0]]

    def _engine_names(self, engines: list[str] | None) -> list[str]:
        if engines is None:
            return list(self.engines)
        unknown = [name for name in engines if name not in self.engines]
        if unknown:
            raise NotFound(f"engine {unknown[0]!r} is not served; served engines: {', '.join(self.engines)}")
        return engines
