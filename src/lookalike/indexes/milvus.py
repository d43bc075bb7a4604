"""Indexes kept in Milvus (LOOKALIKE_INDEX_BACKEND=milvus): the connection, and what every Milvus
index kind shares: one collection per engine, created, searched and marked the same way.

The store stays the source of truth. A collection's marker (which store, which point of its journal)
and the feature spec it was made for are properties of the collection, set after a flush, so a Milvus
index is caught up from the journal or rebuilt exactly as a FAISS index file is. Every collection is
read with Strong consistency: a search never finds an image the library has deleted.

Only what a Milvus cluster offers is used, so that Milvus Lite (a file as the address: the embedded
default the tests run) and a cluster run the same code; Lite has no binary vectors, so binary codes
are kept as sign vectors (`milvus_vectors.py`). Every call to Milvus goes through `Milvus.call`: a
server that cannot be reached, or refuses, is an `IndexUnavailable` (503) naming it.
"""

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import IndexUnavailable
from ..features import FeatureSpec
from .base import IndexSetup, Marker

MARKER = "lookalike.marker"
# Milvus answers at most this many hits per query (its topk limit): the most a search asks for.
MAX_HITS = 16_384
BATCH_ROWS = 4_096  # rows per insert: Milvus's default gRPC message limit is 64 MB


@dataclass(frozen=True)
class MilvusAddress:
    """Where a library's indexes live in Milvus: `uri` a cluster's address, or None for Milvus Lite in
    the data directory; `prefix` begins each of its collections' names."""

    uri: str | None = None
    token: str = ""
    prefix: str = "lookalike_"

    def connect(self, indexes_dir: Path) -> "Milvus":
        return Milvus(self.uri or indexes_dir / "milvus.db", self.token, self.prefix)


class Milvus:
    """A connection to Milvus (a cluster's address, or a file path: embedded Milvus Lite) and the
    prefix of this library's collections, so that libraries can share one Milvus."""

    def __init__(self, uri: str | Path, token: str = "", prefix: str = "lookalike_"):
        try:
            from pymilvus import MilvusClient, MilvusException  # imported with this backend only
        except ImportError as exc:
            raise IndexUnavailable(
                "LOOKALIKE_INDEX_BACKEND=milvus needs pymilvus: pip install 'lookalike[milvus]'"
            ) from exc
        self.uri = str(uri)
        self.prefix = prefix
        self._refused = MilvusException
        self.client = self.call(MilvusClient, self.uri, token=token)

    def call(self, method, *args, **kwargs):
        """`method(*args, **kwargs)`, a client method or the client's making, its refusal an IndexUnavailable."""
        try:
            return method(*args, **kwargs)
        except self._refused as exc:
            raise IndexUnavailable(f"Milvus at {self.uri}: {exc.message}") from exc

    def close(self) -> None:
        self.client.close()


class Collection:
    """One engine's collection in Milvus."""

    def __init__(self, setup: IndexSetup):
        self.milvus: Milvus = setup.milvus
        self.name = self.milvus.prefix + setup.name
        self.spec = setup.spec

    def create(self, schema, index_params) -> None:
        """A new, empty collection in place of any collection of this name."""
        if self._call("has_collection"):
            self._call("drop_collection")
        self._call("create_collection", schema=schema, consistency_level="Strong")
        # Not waiting for the index of an empty collection: pymilvus polls its state every 0.5 s.
        self._call("create_index", index_params, sync=False)
        self._call("load_collection")

    def drop(self) -> None:
        self._call("drop_collection")

    def insert(self, rows: list[dict]) -> None:
        for start in range(0, len(rows), BATCH_ROWS):
            self._call("insert", rows[start : start + BATCH_ROWS])

    def flush(self) -> None:
        """Seal what was written (Milvus builds a sealed segment's index)."""
        self._call("flush")

    def delete(self, ids: list[int] | None = None, filter: str = "") -> None:
        self._call("delete", ids=ids, filter=filter)

    def count(self) -> int:
        return int(self._call("query", filter="", output_fields=["count(*)"])[0]["count(*)"])

    def search(self, vectors: np.ndarray, limit: int, params: dict, fields: tuple[str, ...] = ()) -> list[list[dict]]:
        return self._call(
            "search",
            list(vectors),
            limit=limit,
            anns_field="vector",
            search_params={"params": params},
            output_fields=list(fields),
        )

    def save_marker(self, marker: Marker) -> None:
        """Flush what was written, then record `marker`: a crash between them leaves the old marker,
        whose journal entries the replay then applies again (remove, then add: the same result)."""
        self.flush()
        saved = json.dumps({"marker": asdict(marker), "spec": asdict(self.spec)})
        self._call("alter_collection_properties", properties={MARKER: saved})

    def saved_marker(self) -> Marker | None:
        """The marker of a collection made for this spec; None if there is none."""
        if not self._call("has_collection"):
            return None
        try:
            saved = json.loads(self._call("describe_collection").get("properties", {})[MARKER])
            if FeatureSpec(**saved["spec"]) != self.spec:
                return None
            return Marker(**saved["marker"])
        except (KeyError, TypeError, ValueError):
            return None

    def _call(self, method: str, *args, **kwargs):
        return self.milvus.call(getattr(self.milvus.client, method), self.name, *args, **kwargs)


def padded(results: list[list[dict]], limit: int, value: str = "distance") -> tuple[np.ndarray, np.ndarray]:
    """Milvus's hits as (values, ids) arrays, a row per query: rows shorter than `limit` padded with
    inf and id -1, as FAISS pads them."""
    values = np.full((len(results), limit), np.inf, np.float32)
    ids = np.full((len(results), limit), -1, np.int64)
    for row, hits in enumerate(results):
        values[row, : len(hits)] = [hit[value] for hit in hits]
        ids[row, : len(hits)] = [hit["id"] for hit in hits]
    return values, ids
