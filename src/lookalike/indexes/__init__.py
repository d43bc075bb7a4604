"""The registry of index kinds: in each backend, each feature kind is indexed by one class that follows
`Index`. FAISS (with files beside the store) is the embedded default; Milvus is imported only when
chosen. Texts are indexed by our own word index in either: Milvus has no search by spelling or sound."""

from ..features import FeatureSpec
from .base import DEFAULT_NPROBE, FeatureSource, Hit, Index, IndexSetup, Marker, Matches, Measure, Training
from .points import PointIndex
from .text import TextIndex
from .vectors import VectorIndex

INDEX_KINDS: dict[str, type[Index]] = {
    "binary": VectorIndex,
    "float": VectorIndex,
    "points": PointIndex,
    "text": TextIndex,
}
INDEX_BACKENDS = ("faiss", "milvus")


def milvus_kinds() -> dict[str, type[Index]]:
    from .milvus_points import MilvusPointIndex
    from .milvus_vectors import MilvusVectorIndex

    return {"binary": MilvusVectorIndex, "float": MilvusVectorIndex, "points": MilvusPointIndex, "text": TextIndex}


def index_kind(spec: FeatureSpec, backend: str = "faiss") -> type[Index]:
    if backend not in INDEX_BACKENDS:
        raise ValueError(f"no index backend {backend!r}; known: {', '.join(INDEX_BACKENDS)}")
    kinds = INDEX_KINDS if backend == "faiss" else milvus_kinds()
    if spec.kind not in kinds:
        raise ValueError(f"no index kind for {spec.kind!r} features; known: {', '.join(kinds)}")
    return kinds[spec.kind]


__all__ = [
    "DEFAULT_NPROBE",
    "INDEX_BACKENDS",
    "INDEX_KINDS",
    "FeatureSource",
    "Hit",
    "Index",
    "IndexSetup",
    "Marker",
    "Matches",
    "Measure",
    "Training",
    "index_kind",
]
