"""The store's schema version and each engine's feature spec, checked when it opens: a store written by a
newer version, or with features another setting made, is refused rather than misread."""

import json
import uuid
from dataclasses import asdict

import lmdb

from ..errors import StoreVersionError
from ..features import FeatureSpec

SCHEMA_VERSION = 1


def check_schema(txn: lmdb.Transaction, meta, specs: dict[str, FeatureSpec]) -> str:
    """Check (or, in a new store, write) the schema version and each engine's feature spec; the store's uuid."""
    version = txn.get(b"version", db=meta)
    if version is None:
        txn.put(b"version", str(SCHEMA_VERSION).encode(), db=meta)
        txn.put(b"uuid", uuid.uuid4().hex.encode(), db=meta)
    elif int(version) > SCHEMA_VERSION:
        raise StoreVersionError(
            f"this data directory was written by a newer lookalike (schema {int(version)}; "
            f"this version reads up to {SCHEMA_VERSION}): upgrade lookalike"
        )
    for name, spec in specs.items():
        stored = txn.get(f"spec:{name}".encode(), db=meta)
        if stored is None:
            txn.put(f"spec:{name}".encode(), json.dumps(asdict(spec)).encode(), db=meta)
        elif FeatureSpec(**json.loads(bytes(stored))) != spec:
            raise StoreVersionError(
                f"the {name} engine's features here were made as {bytes(stored).decode()}, "
                f"not {json.dumps(asdict(spec))}: restore the setting they were made with "
                f"(for local features, LOOKALIKE_LOCAL_DESCRIPTOR), or index into a new data directory"
            )
    return txn.get(b"uuid", db=meta).decode()
