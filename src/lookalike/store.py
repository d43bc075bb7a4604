"""The feature store: image records and every engine's features in one LMDB environment.

Layout (keys are 8-byte big-endian image ids unless noted):
    meta         schema version, store uuid, per-engine feature specs and journal sequence numbers
    images       id -> file size, mtime and file name of the image
    names        file name (past 480 bytes, its SHA-256) -> id
    digests      id -> SHA-256 of the image's bytes, as added (images added before it was kept have none)
    contents     SHA-256 + id -> nothing: the images with given bytes, found by a range read
    f:<engine>   id -> the engine's raw feature bytes
    j:<engine>   sequence number -> id touched; FAISS indexes replay it to catch up after a crash

One LMDB write transaction covers an image's record and its features in every engine, so an add or
delete is all or nothing, and the journal entry commits with the change it describes.
"""

import hashlib
import json
import shutil
import struct
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from itertools import groupby, takewhile
from pathlib import Path
from typing import TypeVar

import lmdb
import numpy as np

from .errors import Conflict, NotFound, StorageFull, StoreVersionError
from .features import FeatureSpec
from .locks import SharedExclusiveLock

SCHEMA_VERSION = 1
MAX_IMAGE_ID = 2**63 - 1  # FAISS ids are signed 64-bit
MAX_FILE_NAME_BYTES = 4096  # a path's limit on Linux; longer names are keyed by digest all the same
_INITIAL_MAP_SIZE = 1 << 30
_RECORD = struct.Struct(">Qq")  # file size, mtime_ns
_MAX_NAME_KEY = 480  # LMDB's keys end at 511 bytes
_FULL_DISK_BYTES = 64 * 2**20
T = TypeVar("T")


def id_key(image_id: int) -> bytes:
    return image_id.to_bytes(8, "big")


def key_id(key: bytes) -> int:
    return int.from_bytes(key, "big")


def name_key(file_name: str) -> bytes:
    """A file name's key in `names`: the name itself, or past LMDB's key limit (511 bytes) a digest of
    it, marked by a first byte no UTF-8 text starts with."""
    encoded = file_name.encode()
    return encoded if len(encoded) <= _MAX_NAME_KEY else b"\xff" + hashlib.sha256(encoded).digest()


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    file_name: str
    size: int = 0
    mtime_ns: int = 0
    digest: bytes = b""  # SHA-256 of the bytes it was made from: the same bytes are the same image

    @property
    def from_folder(self) -> bool:
        """Made by `lookalike index`, which records its file's size and mtime. An image added through the
        API has neither (size 0: no image is zero bytes), and `index` leaves it alone."""
        return self.size > 0


class FeatureStore:
    def __init__(self, path: Path, specs: dict[str, FeatureSpec]):
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.specs = specs
        self._env = lmdb.open(str(path), map_size=_INITIAL_MAP_SIZE, max_dbs=6 + 2 * len(specs))
        if self._env.info()["map_size"] < _INITIAL_MAP_SIZE:
            self._env.set_mapsize(_INITIAL_MAP_SIZE)
        self._meta = self._env.open_db(b"meta")
        self._images = self._env.open_db(b"images")
        self._names = self._env.open_db(b"names")
        self._digests = self._env.open_db(b"digests")
        self._contents = self._env.open_db(b"contents")
        self._features = {name: self._env.open_db(f"f:{name}".encode()) for name in specs}
        self._journals = {name: self._env.open_db(f"j:{name}".encode()) for name in specs}
        self._resizing = SharedExclusiveLock()
        self.uuid = self._write(self._check_version)

    def close(self) -> None:
        self._env.close()

    # -- writes ----------------------------------------------------------------------------------

    def add(self, record: ImageRecord, features: dict[str, np.ndarray]) -> None:
        """Store `record` and its features in one transaction.

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
                    self._put_record(txn, replace(record, file_name=name, digest=digest))
            self._put_features(txn, record.image_id, features)

        self._write(add)

    def add_many(self, items: list[tuple[ImageRecord, dict[str, np.ndarray]]]) -> list[int]:
        """Replace-or-add a batch in one transaction (the bulk indexer's unit); returns the replaced ids."""

        def add_all(txn: lmdb.Transaction) -> list[int]:
            replaced = []
            for record, features in items:
                if self._read_record(txn, record.image_id) is not None:
                    replaced.append(record.image_id)
                    self._delete(txn, record.image_id, list(self.specs))
                self._put_record(txn, record)
                self._put_features(txn, record.image_id, features)
            return replaced

        return self._write(add_all)

    def delete(self, image_id: int, engines: list[str] | None = None) -> list[str]:
        """Delete the image's features in `engines` (all by default); the record goes with the last one.

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

        def trim(txn: lmdb.Transaction) -> None:
            cursor = txn.cursor(db=self._journals[engine])
            while cursor.first() and key_id(cursor.key()) <= upto:
                cursor.delete()

        self._write(trim)

    # -- reads -----------------------------------------------------------------------------------

    def record(self, image_id: int) -> ImageRecord | None:
        with self._reading() as txn:
            return self._read_record(txn, image_id)

    def records(self) -> list[ImageRecord]:
        """Every image's record, without its digest (`record` reads that)."""
        with self._reading() as txn:
            return [self._decode_record(key_id(key), value) for key, value in txn.cursor(db=self._images)]

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
            return [None if value is None else self._decode_record(i, value).file_name for i, value in values]

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

    def source(self, engine: str) -> "EngineFeatures":
        return EngineFeatures(self, engine)

    def journal_seq(self, engine: str) -> int:
        with self._reading() as txn:
            return self._seq(txn, engine)

    def journal_since(self, engine: str, seq: int) -> set[int] | None:
        """Ids touched after `seq`; None when the journal cannot say (trimmed past it, or `seq` is ahead)."""
        with self._reading() as txn:
            current = self._seq(txn, engine)
            if seq >= current:
                return set() if seq == current else None
            cursor = txn.cursor(db=self._journals[engine])
            if not cursor.first() or key_id(cursor.key()) > seq + 1:
                return None
            cursor.set_range(id_key(seq + 1))
            return {key_id(value) for value in cursor.iternext(keys=False, values=True)}

    def disk_bytes(self) -> int:
        info, stat = self._env.info(), self._env.stat()
        return (info["last_pgno"] + 1) * stat["psize"]

    # -- internals -------------------------------------------------------------------------------

    def _check_version(self, txn: lmdb.Transaction) -> str:
        version = txn.get(b"version", db=self._meta)
        if version is None:
            txn.put(b"version", str(SCHEMA_VERSION).encode(), db=self._meta)
            txn.put(b"uuid", uuid.uuid4().hex.encode(), db=self._meta)
        elif int(version) > SCHEMA_VERSION:
            raise StoreVersionError(
                f"this data directory was written by a newer lookalike (schema {int(version)}; "
                f"this version reads up to {SCHEMA_VERSION}): upgrade lookalike"
            )
        for name, spec in self.specs.items():
            stored = txn.get(f"spec:{name}".encode(), db=self._meta)
            if stored is None:
                txn.put(f"spec:{name}".encode(), json.dumps(asdict(spec)).encode(), db=self._meta)
            elif FeatureSpec(**json.loads(bytes(stored))) != spec:
                raise StoreVersionError(
                    f"the {name} engine's features here were made as {bytes(stored).decode()}, "
                    f"not {json.dumps(asdict(spec))}: restore the setting they were made with "
                    f"(for local features, LOOKALIKE_LOCAL_DESCRIPTOR), or index into a new data directory"
                )
        return txn.get(b"uuid", db=self._meta).decode()

    def _delete(self, txn: lmdb.Transaction, image_id: int, engines: list[str]) -> list[str]:
        key = id_key(image_id)
        deleted = [name for name in engines if txn.delete(key, db=self._features[name])]
        for name in deleted:
            self._journal(txn, name, image_id)
        if not any(txn.get(key, db=self._features[name]) is not None for name in self.specs):
            record = self._read_record(txn, image_id)
            if record is not None:
                txn.delete(key, db=self._images)
                if record.file_name:
                    txn.delete(name_key(record.file_name), db=self._names)
                if record.digest:
                    txn.delete(key, db=self._digests)
                    txn.delete(record.digest + key, db=self._contents)
        return deleted

    def _put_features(self, txn: lmdb.Transaction, image_id: int, features: dict[str, np.ndarray]) -> None:
        for name, feature in features.items():
            txn.put(id_key(image_id), self._encode(name, feature), db=self._features[name])
            self._journal(txn, name, image_id)

    def _journal(self, txn: lmdb.Transaction, engine: str, image_id: int) -> None:
        seq = self._seq(txn, engine) + 1
        txn.put(f"seq:{engine}".encode(), id_key(seq), db=self._meta)
        txn.put(id_key(seq), id_key(image_id), db=self._journals[engine])

    def _seq(self, txn: lmdb.Transaction, engine: str) -> int:
        value = txn.get(f"seq:{engine}".encode(), db=self._meta)
        return 0 if value is None else key_id(value)

    def _encode(self, engine: str, feature) -> bytes:
        try:
            return self.specs[engine].encode(feature)
        except ValueError as exc:
            raise ValueError(f"{engine}: {exc}") from None

    def _put_record(self, txn: lmdb.Transaction, record: ImageRecord) -> None:
        key = id_key(record.image_id)
        txn.put(key, _RECORD.pack(record.size, record.mtime_ns) + record.file_name.encode(), db=self._images)
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
        return replace(self._decode_record(image_id, value), digest=bytes(digest) if digest else b"")

    @staticmethod
    def _decode_record(image_id: int, value: bytes) -> ImageRecord:
        size, mtime_ns = _RECORD.unpack_from(value)
        return ImageRecord(image_id, bytes(value[_RECORD.size :]).decode(), size, mtime_ns)

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


@dataclass(frozen=True)
class EngineFeatures:
    """One engine's features in the store, as its index reads them (`indexes.FeatureSource`)."""

    store: FeatureStore
    engine: str

    @property
    def spec(self) -> FeatureSpec:
        return self.store.specs[self.engine]

    def read(self, image_ids: list[int] | None = None) -> tuple[np.ndarray, list | np.ndarray]:
        return self.store.read_features(self.engine, image_ids)

    def ids(self) -> np.ndarray:
        return self.store.feature_ids(self.engine)

    def count(self) -> int:
        return self.store.count(self.engine)
