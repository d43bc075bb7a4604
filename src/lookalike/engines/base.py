"""The small interface every engine implements: declare a feature, extract it, maybe add query variants."""

import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class FeatureSpec:
    """What one image's feature is: `dim` bits (binary), `dim` float32 values (float), or a variable
    number of `dim`-byte descriptors with their positions (points); compared by `metric` (for "ip",
    the inner product, the distance is 1 - inner product: the cosine distance of unit vectors).
    `model` names what made the feature, where the engine offers a choice."""

    kind: Literal["binary", "float", "points"]
    dim: int
    metric: Literal["hamming", "l1", "l2", "ip"]
    model: str = ""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.kind == "float" else np.uint8)

    @property
    def width(self) -> int:
        """Array elements per feature: bytes for binary, floats otherwise."""
        return self.dim // 8 if self.kind == "binary" else self.dim

    def encode(self, feature) -> bytes:
        """The feature's bytes as stored: raw array bytes, or a Keypoints' own layout."""
        if self.kind == "points":
            if feature.descriptors.shape[1:] != (self.dim,):
                raise ValueError(f"descriptors have shape {feature.descriptors.shape}, expected (n, {self.dim})")
            return feature.to_bytes()
        feature = np.ascontiguousarray(feature, dtype=self.dtype)
        if feature.shape != (self.width,):
            raise ValueError(f"feature has shape {feature.shape}, expected ({self.width},)")
        return feature.tobytes()

    def decode(self, buffer):
        """Stored bytes back to a feature (a copy: `buffer` may be a view into the store's map)."""
        if self.kind == "points":
            return Keypoints.from_bytes(buffer, self.dim)
        return np.frombuffer(buffer, self.dtype).copy()


_COUNT = struct.Struct("<I")


@dataclass(frozen=True)
class Keypoints:
    """One image's local feature: keypoint positions (working frame) and their uint8 descriptors."""

    xy: np.ndarray  # (n, 2) float32
    descriptors: np.ndarray  # (n, dim) uint8

    def __len__(self) -> int:
        return len(self.xy)

    def to_bytes(self) -> bytes:
        xy = np.ascontiguousarray(self.xy, np.float32)
        return _COUNT.pack(len(xy)) + xy.tobytes() + np.ascontiguousarray(self.descriptors, np.uint8).tobytes()

    @classmethod
    def from_bytes(cls, buffer, dim: int) -> "Keypoints":
        (n,) = _COUNT.unpack_from(buffer)
        xy = np.frombuffer(buffer, np.float32, 2 * n, _COUNT.size).reshape(n, 2)
        descriptors = np.frombuffer(buffer, np.uint8, n * dim, _COUNT.size + xy.nbytes).reshape(n, dim)
        return cls(xy.copy(), descriptors.copy())


class Engine(ABC):
    name: str
    spec: FeatureSpec
    # Smallest side of the decoded image this engine needs; None means full resolution.
    decode_side: int | None = None
    # Distance at or under which two images count as the same (used by `dupes` and the gateway).
    duplicate_threshold: float
    # The original services' name in their search endpoints, e.g. /phash_get_similar_images_by_id.
    service_name: str = ""

    def prepare(self) -> None:
        """Fetch or load what extraction needs (a model), so that it happens once and up front."""

    @abstractmethod
    def extract(self, image: Image.Image):
        """One RGB image to one feature: a 1-D array of `spec.width` elements of `spec.dtype`
        (a `Keypoints` for a points engine)."""

    def extract_many(self, images: list[Image.Image]) -> list:
        """Features of several images; neural engines run them through their model as one batch."""
        return [self.extract(image) for image in images]

    def query_variants(self, image: Image.Image, mirrored: bool = False) -> list:
        """Features to search with; an image's score is its best over all variants.

        `mirrored` asks for the mirror image too, where an engine does not search with it anyway.
        """
        return [self.extract(image)]


class TextSearchable(ABC):
    """An engine that also answers a text query, with a feature in the same space as its images'."""

    @abstractmethod
    def embed_text(self, text: str) -> np.ndarray:
        """The text's query feature; raises InvalidRequest when the engine cannot read this text."""
