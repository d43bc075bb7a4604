"""The backlog: the slow engines' features an image still lacks, and where to make them from.

A library can be added to in two passes (`Library.add(defer_slow=True)`, `lookalike index`): the fast
engines' features at once, the slow engines' (captions, local features, OCR) later, by a background
pass. What the second pass owes is kept here, in the store's own LMDB environment, and changes in the
same transaction as the features: an image's entry names the engines it waits for and the digest of
the bytes it was added from, and is cut back as each engine's feature is written, so a crash or a
restart resumes it and nothing is lost or done twice. An image added through the API keeps its bytes
here (`held`) until its entry is done; one made by `lookalike index` is read again from its file.

Layout (keys are 8-byte big-endian image ids):
    backlog   id -> SHA-256 of the image's bytes, then the names of the engines it waits for
    held      id -> the uploaded image's bytes, for as long as its entry lasts
"""

from collections import Counter
from dataclasses import dataclass

import lmdb

from .records import MAX_IMAGE_ID, id_key, key_id

_DIGEST = 32


@dataclass(frozen=True)
class Pending:
    """An image the background pass still owes some engines' features."""

    image_id: int
    digest: bytes
    engines: tuple[str, ...]


class Backlog:
    """The backlog's tables, read and written inside the store's transactions."""

    def __init__(self, env: lmdb.Environment):
        self._entries = env.open_db(b"backlog")
        self._held = env.open_db(b"held")

    def put(self, txn: lmdb.Transaction, pending: Pending, data: bytes | None) -> None:
        """Owe `pending`; an image that already waits for other engines waits for these too."""
        owed = self.get(txn, pending.image_id)
        if owed is not None:
            pending = Pending(pending.image_id, owed.digest, tuple(dict.fromkeys(owed.engines + pending.engines)))
            data = data if data is not None else self.held(txn, pending.image_id)
        if pending.engines:
            txn.put(id_key(pending.image_id), _encode(pending), db=self._entries)
            if data is not None:
                txn.put(id_key(pending.image_id), data, db=self._held)

    def done(self, txn: lmdb.Transaction, image_id: int, engines) -> None:
        """The image no longer waits for `engines` (their features were written, or deleted)."""
        pending = self.get(txn, image_id)
        if pending is not None and set(engines) & set(pending.engines):
            left = tuple(name for name in pending.engines if name not in engines)
            if left:
                txn.put(id_key(image_id), _encode(Pending(image_id, pending.digest, left)), db=self._entries)
            else:
                self.drop(txn, image_id)

    def drop(self, txn: lmdb.Transaction, image_id: int) -> None:
        txn.delete(id_key(image_id), db=self._entries)
        txn.delete(id_key(image_id), db=self._held)

    def get(self, txn: lmdb.Transaction, image_id: int) -> Pending | None:
        value = txn.get(id_key(image_id), db=self._entries)
        return None if value is None else _decode(image_id, value)

    def held(self, txn: lmdb.Transaction, image_id: int) -> bytes | None:
        value = txn.get(id_key(image_id), db=self._held)
        return None if value is None else bytes(value)

    def entries(self, txn: lmdb.Transaction, engines=None, after: int = -1, limit: int | None = None):
        """Pending images in id order past `after` (those waiting for any of `engines`, if given), up to `limit`."""
        cursor = txn.cursor(db=self._entries)
        found = []
        if after < MAX_IMAGE_ID and cursor.set_range(id_key(after + 1)):
            for key, value in cursor:
                pending = _decode(key_id(key), value)
                if engines is None or not engines.isdisjoint(pending.engines):
                    found.append(pending)
                    if limit is not None and len(found) >= limit:
                        break
        return found

    def counts(self, txn: lmdb.Transaction) -> dict[str, int]:
        """How many images wait for each engine."""
        values = txn.cursor(db=self._entries).iternext(keys=False)
        return dict(Counter(name for value in values for name in _decode(0, value).engines))


def _encode(pending: Pending) -> bytes:
    return pending.digest + "\n".join(pending.engines).encode()


def _decode(image_id: int, value) -> Pending:
    value = bytes(value)
    return Pending(image_id, value[:_DIGEST], tuple(value[_DIGEST:].decode().split("\n")))
