"""The feature store: image records and every engine's features in one LMDB environment.

Layout (keys are 8-byte big-endian image ids unless noted):
    meta         schema version, store uuid, per-engine feature specs and journal sequence numbers
    images       id -> file size, mtime and file name of the image
    names        file name (past 480 bytes, its SHA-256) -> id
    digests      id -> SHA-256 of the image's bytes, as added (images added before it was kept have none)
    contents     SHA-256 + id -> nothing: the images with given bytes, found by a range read
    f:<engine>   id -> the engine's raw feature bytes
    j:<engine>   each engine's journal of the ids touched (`journal.py`)
    thumbnails   id -> the image's `thumbnails.Thumbnail`, as bytes: what the web page shows
    backlog, held  the slow engines' features still owed (`backlog.py`)

One LMDB write transaction covers an image's record, its thumbnail, its features in every engine (and
its backlog entry), so an add or delete is all or nothing, and the journal entry commits with the change
it describes.
"""

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from itertools import groupby, takewhile
from pathlib import Path
from typing import TypeVar

import lmdb
import numpy as np

from ..errors import Conflict, NotFound, StorageFull
from ..features import FeatureSpec
from ..locks import SharedExclusiveLock
from .backlog import Backlog, Pending
from .engine_features import EngineFeatures
from .journal import Journals
from .records import ImageRecord, id_key, key_id, name_key
from .schema import check_schema

_INITIAL_MAP_SIZE = 1 << 30
_FULL_DISK_BYTES = 64 * 2**20
T = TypeVar("T")


class FeatureStore:
    def __init__(self, path: Path, specs: dict[str, FeatureSpec]):
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.specs = specs
        self._env = lmdb.open(str(path), map_size=_INITIAL_MAP_SIZE, max_dbs=10 + 2 * len(specs))
        if self._env.info()["map_size"] < _INITIAL_MAP_SIZE:
            self._env.set_mapsize(_INITIAL_MAP_SIZE)
        self._meta = self._env.open_db(b"meta")
        self._images = self._env.open_db(b"images")
        self._names = self._env.open_db(b"names")
        self._digests = self._env.open_db(b"digests")
        self._contents = self._env.open_db(b"contents")
        self._thumbnails = self._env.open_db(b"thumbnails")
        self._features = {name: self._env.open_db(f"f:{name}".encode()) for name in specs}
        self._journals = Journals(self._env, self._meta, specs)
        self._backlog = Backlog(self._env)
        self._resizing = SharedExclusiveLock()
        self.uuid = self._write(lambda txn: check_schema(txn, self._meta, specs))

    def close(self) -> None:
        self._env.close()

    # -- writes ----------------------------------------------------------------------------------

    def add(
        self,
        record: ImageRecord,
        features: dict[str, np.ndarray],
        deferred: tuple[str, ...] = (),
        data: bytes | None = None,
    ) -> None:
        """Store `record` and its features in one transaction, with the `deferred` engines' owed to the
        backlog (made later from `data`, the image's bytes).

        An image may gain engines one call at a time; an id that already holds a feature of one of
        these engines, or already has another file name, or a file name owned by another id, is a Conflict.
        """

        def add(txn: lmdb.Transaction) -> None:
            owner = txn.get(name_key(record.file_name), db=self._names) if record.file_name else None
            if owner is not None and key_id(owner) != record.image_id:
                raise Conflict(f"file name {record.file_name!r} already belongs to image {key_id(owner)}")
            existing = self._read_record(txn, record.image_id)
            if existing is None:
                self._put_record(txn, record)
            else:
                if record.file_name and existing.file_name not in ("", record.file_name):
                    raise Conflict(f"image {record.image_id} already exists as {existing.file_name!r}")
                key = id_key(record.image_id)
                taken = [name for name in features if txn.get(key, db=self._features[name]) is not None]
                if taken:
                    raise Conflict(f"image {record.image_id} is already in engine(s) {', '.join(taken)}")
                if (record.file_name and not existing.file_name) or (record.digest and not existing.digest):
                    # What the record had stays: a second digest would leave the first one's entry behind.
                    name, digest = record.file_name or existing.file_name, existing.digest or record.digest
                    self._put_record(txn, replace(record, file_name=name, digest=digest, thumbnail=b""))
                if record.thumbnail and txn.get(key, db=self._thumbnails) is None:
                    txn.put(key, record.thumbnail, db=self._thumbnails)
            self._put_features(txn, record.image_id, features)
            if deferred:
                self._backlog.put(txn, Pending(record.image_id, record.digest, deferred), data)

        self._write(add)

    def add_many(
        self, items: list[tuple[ImageRecord, dict[str, np.ndarray]]], deferred: tuple[str, ...] = ()
    ) -> list[int]:
        """Replace-or-add a batch in one transaction (the bulk indexer's unit), each image owing the
        `deferred` engines' features to the backlog (made later from its file); returns the replaced ids."""

        def add_all(txn: lmdb.Transaction) -> list[int]:
            replaced = []
            for record, features in items:
                if self._read_record(txn, record.image_id) is not None:
                    replaced.append(record.image_id)
                    self._delete(txn, record.image_id, list(self.specs))
                self._put_record(txn, record)
                self._put_features(txn, record.image_id, features)
                if deferred:
                    self._backlog.put(txn, Pending(record.image_id, record.digest, deferred), None)
            return replaced

        return self._write(add_all)

    def complete(self, items: list[tuple[Pending, dict]]) -> dict[int, dict]:
        """Write what the backlog owed, in one transaction: for each pending image, as read, with the
        engines worked on as its `engines`, the features made (an engine without one could not make it:
        the image stays without it). Returns the features written, by image. An image deleted or
        replaced since its entry was read is left as it is now: nothing made from its old bytes is written."""

        def complete_all(txn: lmdb.Transaction) -> dict[int, dict]:
            written = {}
            for pending, features in items:
                now = self._backlog.get(txn, pending.image_id)
                if now is None or now.digest != pending.digest:
                    continue
                written[pending.image_id] = {name: f for name, f in features.items() if name in now.engines}
                self._put_features(txn, pending.image_id, written[pending.image_id])
                self._backlog.done(txn, pending.image_id, pending.engines)
            return written

        return self._write(complete_all)

    def delete(self, image_id: int, engines: list[str] | None = None) -> list[str]:
        """Delete the image's features in `engines` (all by default); the record goes with the last one.
        An engine the image still waits for counts as one it is deleted from: it will not get it.

        Returns the engines it was deleted from; NotFound where it was in none of them.
        """
        engines = list(self.specs) if engines is None else engines

        def delete(txn: lmdb.Transaction) -> list[str]:
            if self._read_record(txn, image_id) is None:
                raise NotFound(f"image {image_id} is not in the library")
            deleted = self._delete(txn, image_id, engines)
            if not deleted:
                raise NotFound(f"image {image_id} is not in engine(s) {', '.join(engines)}")
            return deleted

        return self._write(delete)

    def delete_many(self, image_ids: list[int]) -> None:
        def delete_all(txn: lmdb.Transaction) -> None:
            for image_id in image_ids:
                self._delete(txn, image_id, list(self.specs))

        self._write(delete_all)

    def trim_journal(self, engine: str, upto: int) -> None:
        """Forget journal entries at or below `upto`, once an index reflecting them is saved."""

        self._write(lambda txn: self._journals.trim(txn, engine, upto))

    # -- reads -----------------------------------------------------------------------------------

    def pending(self, engines: set[str] | None = None, after: int = -1, limit: int | None = None) -> list[Pending]:
        """Images the backlog still owes features (of any of `engines`, if given), in id order past `after`."""
        with self._reading() as txn:
            return self._backlog.entries(txn, engines, after, limit)

    def pending_of(self, image_ids: list[int]) -> dict[int, tuple[str, ...]]:
        """The engines each of `image_ids` still waits for (those waiting for any)."""
        with self._reading() as txn:
            found = ((i, self._backlog.get(txn, i)) for i in image_ids)
            return {i: pending.engines for i, pending in found if pending is not None}

    def held(self, image_id: int) -> bytes | None:
        """The bytes an image added through the API was made from, while the backlog owes it features."""
        with self._reading() as txn:
            return self._backlog.held(txn, image_id)

    def backlog(self) -> dict[str, int]:
        """How many images each engine still owes a feature."""
        with self._reading() as txn:
            return dict.fromkeys(self.specs, 0) | self._backlog.counts(txn)

    def record(self, image_id: int) -> ImageRecord | None:
        """The image's record, with its digest (its thumbnail: `thumbnail`)."""
        with self._reading() as txn:
            return self._read_record(txn, image_id)

    def thumbnail(self, image_id: int) -> bytes | None:
        """The image's `thumbnails.Thumbnail`, as bytes; None where it has none."""
        with self._reading() as txn:
            value = txn.get(id_key(image_id), db=self._thumbnails)
            return None if value is None else bytes(value)

    def without_thumbnails(self) -> list[ImageRecord]:
        """The records of images stored before thumbnails were made (without their digests)."""
        with self._reading() as txn:
            cursor = txn.cursor(db=self._thumbnails)
            missing = [(k, v) for k, v in txn.cursor(db=self._images) if not cursor.set_key(k)]
            return [ImageRecord.from_bytes(key_id(key), value) for key, value in missing]

    def put_thumbnails(self, items: list[tuple[int, bytes, bytes]]) -> None:
        """Store thumbnails made later, (image id, digest of the bytes it was made from, thumbnail) each,
        in one transaction; not one of an image replaced or deleted since (a store that kept no digest
        for it cannot tell: its caller checked the file)."""

        def put(txn: lmdb.Transaction) -> None:
            for image_id, digest, thumbnail in items:
                record = self._read_record(txn, image_id)
                if record is not None and record.digest in (b"", digest):
                    txn.put(id_key(image_id), thumbnail, db=self._thumbnails)

        self._write(put)

    def records(self) -> list[ImageRecord]:
        """Every image's record, without its digest (`record` reads that)."""
        with self._reading() as txn:
            return [ImageRecord.from_bytes(key_id(key), value) for key, value in txn.cursor(db=self._images)]

    def ids_with_digest(self, digest: bytes) -> list[int]:
        """The images added from exactly these bytes (by their SHA-256)."""
        with self._reading() as txn:
            cursor = txn.cursor(db=self._contents)
            keys = cursor.iternext(values=False) if cursor.set_range(digest) else []
            return [key_id(key[32:]) for key in takewhile(lambda key: bytes(key[:32]) == digest, keys)]

    def same_contents(self) -> list[list[int]]:
        """Every group of two or more images added from the same bytes; one pass over the digests."""
        with self._reading() as txn:
            keys = [bytes(key) for key in txn.cursor(db=self._contents).iternext(values=False)]
        groups = [[key_id(key[32:]) for key in same] for _, same in groupby(keys, key=lambda key: key[:32])]
        return [group for group in groups if len(group) > 1]

    def id_for_name(self, file_name: str) -> int | None:
        with self._reading() as txn:
            key = txn.get(name_key(file_name), db=self._names) if file_name else None
            return None if key is None else key_id(key)

    def names_for(self, image_ids: list[int]) -> list[str | None]:
        """Each image's file name (None: no such image); every search hit's, so its record alone is read."""
        with self._reading() as txn:
            values = ((i, txn.get(id_key(i), db=self._images)) for i in image_ids)
            return [None if value is None else ImageRecord.from_bytes(i, value).file_name for i, value in values]

    def engines_of(self, image_id: int) -> list[str]:
        """The engines holding a feature of the image."""
        with self._reading() as txn:
            return [name for name, db in self._features.items() if txn.get(id_key(image_id), db=db) is not None]

    def feature(self, engine: str, image_id: int) -> np.ndarray | None:
        with self._reading() as txn:
            value = txn.get(id_key(image_id), db=self._features[engine])
            return None if value is None else self.specs[engine].decode(value)

    def count(self, engine: str | None = None) -> int:
        with self._reading() as txn:
            db = self._images if engine is None else self._features[engine]
            return txn.stat(db)["entries"]

    def max_id(self) -> int:
        with self._reading() as txn:
            cursor = txn.cursor(db=self._images)
            return key_id(cursor.key()) if cursor.last() else -1

    def feature_ids(self, engine: str) -> np.ndarray:
        with self._reading() as txn:
            return np.array(
                [key_id(key) for key in txn.cursor(db=self._features[engine]).iternext(values=False)], np.int64
            )

    def read_features(self, engine: str, image_ids: list[int] | None = None) -> tuple[np.ndarray, list | np.ndarray]:
        """(ids, features) of every stored feature of `engine` (ids ascending), or of those of `image_ids`
        present. Fixed-size features come as one (n, width) array, others as a list."""
        with self._reading() as txn:
            db = self._features[engine]
            if image_ids is None:
                found = ((key_id(key), value) for key, value in txn.cursor(db=db))
            else:
                found = ((i, v) for i in image_ids if (v := txn.get(id_key(i), db=db)) is not None)
            ids = []

            def values():  # one pass: a million features are not held twice, as pairs and as rows
                for image_id, value in found:
                    ids.append(image_id)
                    yield value

            features = self.specs[engine].collect(values())
        return np.array(ids, np.int64), features

    def source(self, engine: str) -> EngineFeatures:
        return EngineFeatures(self, engine)

    def journal_seq(self, engine: str) -> int:
        with self._reading() as txn:
            return self._journals.seq(txn, engine)

    def journal_since(self, engine: str, seq: int) -> set[int] | None:
        """Ids touched after `seq`; None when the journal cannot say (trimmed past it, or `seq` is ahead)."""
        with self._reading() as txn:
            return self._journals.since(txn, engine, seq)

    def disk_bytes(self) -> int:
        info, stat = self._env.info(), self._env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    # -- internals -------------------------------------------------------------------------------

    def _delete(self, txn: lmdb.Transaction, image_id: int, engines: list[str]) -> list[str]:
        key = id_key(image_id)
        deleted = [name for name in engines if txn.delete(key, db=self._features[name])]
        for name in deleted:
            self._journals.record(txn, name, image_id)
        pending = self._backlog.get(txn, image_id)
        if pending is not None:
            deleted += [name for name in engines if name in pending.engines and name not in deleted]
            self._backlog.done(txn, image_id, engines)
        if not any(txn.get(key, db=self._features[name]) is not None for name in self.specs):
            self._backlog.drop(txn, image_id)
            record = self._read_record(txn, image_id)
            if record is not None:
                txn.delete(key, db=self._images)
                txn.delete(key, db=self._thumbnails)
                if record.file_name:
                    txn.delete(name_key(record.file_name), db=self._names)
                if record.digest:
                    txn.delete(key, db=self._digests)
                    txn.delete(record.digest + key, db=self._contents)
        return deleted

    def _put_features(self, txn: lmdb.Transaction, image_id: int, features: dict[str, np.ndarray]) -> None:
        for name, feature in features.items():
            txn.put(id_key(image_id), self._encode(name, feature), db=self._features[name])
            self._journals.record(txn, name, image_id)
        self._backlog.done(txn, image_id, features)

    def _encode(self, engine: str, feature) -> bytes:
        try:
            return self.specs[engine].encode(feature)
        except ValueError as exc:
            raise ValueError(f"{engine}: {exc}") from None

    def _put_record(self, txn: lmdb.Transaction, record: ImageRecord) -> None:
        key = id_key(record.image_id)
        txn.put(key, record.to_bytes(), db=self._images)
        if record.thumbnail:
            txn.put(key, record.thumbnail, db=self._thumbnails)
        if record.file_name:
            txn.put(name_key(record.file_name), key, db=self._names)
        if record.digest:
            txn.put(key, record.digest, db=self._digests)
            txn.put(record.digest + key, b"", db=self._contents)

    def _read_record(self, txn: lmdb.Transaction, image_id: int) -> ImageRecord | None:
        key = id_key(image_id)
        value = txn.get(key, db=self._images)
        if value is None:
            return None
        digest = txn.get(key, db=self._digests)
        return replace(ImageRecord.from_bytes(image_id, value), digest=bytes(digest) if digest else b"")

    @contextmanager
    def _reading(self) -> Iterator[lmdb.Transaction]:
        # buffers=True: values are memoryviews into the map, valid only inside the transaction.
        with self._resizing.shared(), self._env.begin(buffers=True) as txn:
            yield txn

    def _write(self, work: Callable[[lmdb.Transaction], T]) -> T:
        """Run `work` in one write transaction, doubling the map and retrying when it is full."""
        while True:
            try:
                with self._resizing.shared(), self._env.begin(write=True) as txn:
                    return work(txn)
            except lmdb.MapFullError:
                with self._resizing.exclusive():
                    self._env.set_mapsize(self._env.info()["map_size"] * 2)
            except lmdb.Error as exc:
                # LMDB reports a write that found no room as an I/O error; the free space tells them apart.
                if shutil.disk_usage(self.path).free < _FULL_DISK_BYTES:
                    raise StorageFull(
                        f"the disk holding the data directory is full (under {_FULL_DISK_BYTES >> 20} MiB free): "
                        "this change was not written; free some space and retry"
                    ) from exc
                raise
