"""Each engine's journal: the ids its features changed for, in order, written in the transaction of the
change. An index saved with the journal's sequence number then catches up after a crash by replaying
what came after it (`indexes.manager`), and the entries it reflects are trimmed once it is saved.

Layout (in the store's LMDB environment; keys 8-byte big-endian):
    j:<engine>          sequence number -> id touched
    meta seq:<engine>   the last sequence number
"""

import lmdb

from .records import id_key, key_id


class Journals:
    def __init__(self, env: lmdb.Environment, meta, engines):
        self._meta = meta
        self._dbs = {name: env.open_db(f"j:{name}".encode()) for name in engines}

    def record(self, txn: lmdb.Transaction, engine: str, image_id: int) -> None:
        seq = self.seq(txn, engine) + 1
        txn.put(f"seq:{engine}".encode(), id_key(seq), db=self._meta)
        txn.put(id_key(seq), id_key(image_id), db=self._dbs[engine])

    def seq(self, txn: lmdb.Transaction, engine: str) -> int:
        value = txn.get(f"seq:{engine}".encode(), db=self._meta)
        return 0 if value is None else key_id(value)

    def since(self, txn: lmdb.Transaction, engine: str, seq: int) -> set[int] | None:
        """Ids touched after `seq`; None when the journal cannot say (trimmed past it, or `seq` is ahead)."""
        current = self.seq(txn, engine)
        if seq >= current:
            return set() if seq == current else None
        cursor = txn.cursor(db=self._dbs[engine])
        if not cursor.first() or key_id(cursor.key()) > seq + 1:
            return None
        cursor.set_range(id_key(seq + 1))
        return {key_id(value) for value in cursor.iternext(keys=False, values=True)}

    def trim(self, txn: lmdb.Transaction, engine: str, upto: int) -> None:
        """Forget entries at or below `upto`, once an index reflecting them is saved."""
        cursor = txn.cursor(db=self._dbs[engine])
        while cursor.first() and key_id(cursor.key()) <= upto:
            cursor.delete()
