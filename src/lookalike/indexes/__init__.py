"""The registry of index kinds: each feature kind is indexed by one class that follows `Index`."""

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


def index_kind(spec: FeatureSpec) -> type[Index]:
    if spec.kind not in INDEX_KINDS:
        raise ValueError(f"no index kind for {spec.kind!r} features; known: {', '.join(INDEX_KINDS)}")
    return INDEX_KINDS[spec.kind]


__all__ = [
    "DEFAULT_NPROBE",
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
