"""What one image's feature is, and its stored bytes.

A `FeatureSpec` names a kind of feature and how two are compared; the store keeps `encode`d bytes and
the indexes read them back with `decode`. This module imports nothing from engines, models or
indexes: they all import it.
"""

import json
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

Kind = Literal["binary", "float", "points", "text"]
Metric = Literal["hamming", "l1", "l2", "ip", "words"]
# Kinds whose every feature has the same size: read back many at a time as one array.
FIXED_SIZE: frozenset[str] = frozenset({"binary", "float"})


@dataclass(frozen=True)
class FeatureSpec:
    """What one image's feature is: `dim` bits (binary), `dim` float32 values (float), a variable
    number of `dim`-byte descriptors with their positions (points), or lines of text (text); compared
    by `metric` (for "ip", the inner product, the distance is 1 - inner product: the cosine distance
    of unit vectors; for "words", the words two texts share). `model` names what made the feature,
    where the engine offers a choice."""

    kind: Kind
    dim: int
    metric: Metric
    model: str = ""

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.float32 if self.kind == "float" else np.uint8)

    @property
    def width(self) -> int:
        """Array elements per feature: bytes for binary, floats otherwise."""
        return self.dim // 8 if self.kind == "binary" else self.dim

    @property
    def fixed_size(self) -> bool:
        return self.kind in FIXED_SIZE

    @property
    def is_embedding(self) -> bool:
        """Unit vectors compared by inner product: they can be whitened, compressed and expanded."""
        return self.kind == "float" and self.metric == "ip"

    def encode(self, feature) -> bytes:
        """The feature's bytes as stored: raw array bytes, or a Keypoints' or TextLines' own layout."""
        if self.kind == "points":
            if feature.descriptors.shape[1:] != (self.dim,):
                raise ValueError(f"descriptors have shape {feature.descriptors.shape}, expected (n, {self.dim})")
            return feature.to_bytes()
        if self.kind == "text":
            if not isinstance(feature, TextLines):
                raise ValueError(f"a text feature is TextLines, not {type(feature).__name__}")
            return feature.to_bytes()
        feature = np.ascontiguousarray(feature, dtype=self.dtype)
        if feature.shape != (self.width,):
            raise ValueError(f"feature has shape {feature.shape}, expected ({self.width},)")
        return feature.tobytes()

    def decode(self, buffer):
        """Stored bytes back to a feature (a copy: `buffer` may be a view into the store's map)."""
        if self.kind == "points":
            return Keypoints.from_bytes(buffer, self.dim)
        if self.kind == "text":
            return TextLines.from_bytes(buffer)
        return np.frombuffer(buffer, self.dtype).copy()

    def collect(self, buffers: Iterable) -> np.ndarray | list:
        """Many stored features at once: one (n, width) array for fixed-size kinds, else a list."""
        if not self.fixed_size:
            return [self.decode(buffer) for buffer in buffers]
        rows, count = bytearray(), 0
        for buffer in buffers:
            rows += buffer
            count += 1
        return np.frombuffer(rows, self.dtype).reshape(count, self.width)


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


class Matches(NamedTuple):
    """A points engine's check of a query against one candidate (better: more matches, then precise)."""

    count: int  # matches one homography explains; 0 below the engine's minimum
    # Of them, those one similarity transform places within a pixel: a copy (crop, turn, scale,
    # border) keeps nearly all, another shot of the same scene (parallax, perspective) few.
    precise: int


@dataclass(frozen=True)
class TextLine:
    """One line of text found in an image (or a caption of it): its words, how sure the reader was,
    and where it is: the four corners (x, y) clockwise from the top left of the text as it reads, as
    fractions of the image's width and height; no corners for text about the whole image."""

    text: str
    confidence: float = 1.0
    box: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True)
class TextLines:
    """One image's text feature: its lines, in reading order."""

    lines: tuple[TextLine, ...] = ()

    def __len__(self) -> int:
        return len(self.lines)

    def __iter__(self):
        return iter(self.lines)

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)

    def to_bytes(self) -> bytes:
        lines = [{"text": line.text, "confidence": line.confidence, "box": line.box} for line in self.lines]
        return json.dumps(lines, ensure_ascii=False, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, buffer) -> "TextLines":
        lines = json.loads(bytes(buffer))
        return cls(tuple(TextLine(n["text"], n["confidence"], tuple(tuple(xy) for xy in n["box"])) for n in lines))
