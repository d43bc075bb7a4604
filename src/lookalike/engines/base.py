"""The small interface every engine implements: declare a feature, extract it, maybe add query variants."""

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class FeatureSpec:
    """What one image's feature is: `dim` bits (binary) or float32 values, compared by `metric`."""

    kind: Literal["binary", "float"]
    dim: int
    metric: Literal["hamming", "l1"]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8 if self.kind == "binary" else np.float32)

    @property
    def width(self) -> int:
        """Array elements per feature: bytes for binary, floats otherwise."""
        return self.dim // 8 if self.kind == "binary" else self.dim

    @property
    def nbytes(self) -> int:
        return self.width * self.dtype.itemsize


class Engine(ABC):
    name: str
    spec: FeatureSpec
    # Smallest side of the decoded image this engine needs; None means full resolution.
    decode_side: int | None = None
    # Distance at or under which two images count as the same (used by `dupes` and the gateway).
    duplicate_threshold: float

    @abstractmethod
    def extract(self, image: Image.Image) -> np.ndarray:
        """One RGB image to one feature: a 1-D array of `spec.width` elements of `spec.dtype`."""

    def query_variants(self, image: Image.Image) -> list[np.ndarray]:
        """Features to search with; an image's distance is its smallest over all variants."""
        return [self.extract(image)]
