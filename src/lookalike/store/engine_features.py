"""One engine's features in the store, as its index reads them (`indexes.FeatureSource`)."""

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..features import FeatureSpec

if TYPE_CHECKING:
    from .feature_store import FeatureStore


@dataclass(frozen=True)
class EngineFeatures:
    """One engine's features in the store, as its index reads them (`indexes.FeatureSource`)."""

    store: "FeatureStore"
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
