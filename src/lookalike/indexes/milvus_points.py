"""The local features engine's index in a Milvus collection: a row per descriptor, with its image id
as a field, so a hit names its image and an image's descriptors are deleted by a filter on it (no
point ranges to keep). Searches vote and verify as the FAISS `PointIndex` does (`voted_candidates`,
`verified_hits`); Milvus builds an IVF_SQ8 index per sealed segment (8-bit codes of the uint8
descriptors, as the flat FAISS index keeps them) and scans its growing segments exactly.

Which images the collection holds is kept in memory: Milvus cannot count distinct field values. On
load it is the store's images: the collection equals the store at the marker, and the manager's
replay of the journal then removes and adds back every image changed since, here and in the set.
"""

import threading
from typing import ClassVar

import numpy as np
from pymilvus import DataType, MilvusClient

from ..errors import InvalidRequest
from ..features import Keypoints
from .base import Hit, IndexSetup, Marker, Measure, Training
from .milvus import Collection, padded
from .points import NEIGHBOURS, verified_hits, voted_candidates

LISTS = 1_024  # inverted lists per sealed segment (Milvus seals at about 1M 128-d descriptors)


class MilvusPointIndex:
    measure: ClassVar[Measure] = Measure.MATCHES

    def __init__(self, setup: IndexSetup, held: set[int] | None = None):
        """An empty collection, in place of any of this engine's; `held`: the one there, holding these images."""
        self.setup = setup
        self.spec = setup.spec
        self.collection = Collection(setup)
        if held is None:
            self.collection.create(*self._schema())
        self._held = held or set()
        self._lock = threading.Lock()  # over `_held` only: Milvus orders its own reads and writes

    @property
    def ntotal(self) -> int:
        return len(self._held)

    def add(self, image_ids, features: list[Keypoints]) -> None:
        rows = [
            {"image_id": int(image_id), "vector": descriptor}
            for image_id, feature in zip(image_ids, features)
            for descriptor in feature.descriptors.astype(np.float32)
        ]
        self.collection.insert(rows)
        with self._lock:
            self._held.update(int(i) for i in image_ids)

    def remove(self, image_ids) -> None:
        image_ids = [int(i) for i in image_ids]
        if image_ids:
            self.collection.delete(filter=f"image_id in {image_ids}")
            with self._lock:
                self._held.difference_update(image_ids)

    def search(self, queries: list[Keypoints], k: int | None = None, threshold: float | None = None) -> list[Hit]:
        """Images sharing verified matches with any variant, most matches first."""
        return verified_hits(self.setup, [(variant, self._candidates(variant)) for variant in queries], k, threshold)

    def _candidates(self, query: Keypoints) -> list[int]:
        if len(query) == 0 or not self._held:
            return []
        found = self.collection.search(
            query.descriptors.astype(np.float32), NEIGHBOURS, {"nprobe": self.setup.nprobe}, fields=("image_id",)
        )
        squared, _ = padded(found, NEIGHBOURS)
        images = np.full(squared.shape, -1, np.int64)
        for row, hits in enumerate(found):
            images[row, : len(hits)] = [hit["entity"]["image_id"] for hit in hits]
        return voted_candidates(squared, images)

    def needs_training(self) -> bool:
        return False

    def stats(self) -> dict:
        return {"indexed": self.ntotal, "descriptors": self.collection.count(), "milvus": "IVF_SQ8"}

    def save(self, marker: Marker) -> None:
        self.collection.save_marker(marker)

    @classmethod
    def load(cls, setup: IndexSetup) -> tuple["MilvusPointIndex", Marker] | None:
        marker = Collection(setup).saved_marker()
        return None if marker is None else (cls(setup, held=set(setup.source.ids().tolist())), marker)

    @classmethod
    def build(cls, setup: IndexSetup) -> "MilvusPointIndex":
        index = cls(setup)
        ids = setup.source.ids()
        for start in range(0, len(ids), 1_000):  # memory holds a thousand images' descriptors at a time
            index.add(*setup.source.read(ids[start : start + 1_000].tolist()))
        return index

    @classmethod
    def train(cls, setup: IndexSetup, training: Training) -> "MilvusPointIndex":
        raise InvalidRequest(f"{setup.name} is indexed in Milvus, which builds and trains its own index")

    def _schema(self):
        schema = MilvusClient.create_schema(auto_id=True)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("image_id", DataType.INT64)
        schema.add_field("vector", DataType.FLOAT_VECTOR, dim=self.spec.dim)
        index_params = MilvusClient.prepare_index_params()
        index_params.add_index("vector", index_type="IVF_SQ8", metric_type="L2", params={"nlist": LISTS})
        index_params.add_index("image_id", index_type="INVERTED")
        return schema, index_params
