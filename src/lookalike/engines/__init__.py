"""The engine registry: an engine is one module plus one line here."""

from collections.abc import Iterable

from PIL import Image

from ..decode import decode
from .base import Engine, FeatureSpec
from .color import ColorHistogram
from .phash import PHash

ENGINES: dict[str, type[Engine]] = {
    PHash.name: PHash,
    ColorHistogram.name: ColorHistogram,
}


def create_engine(name: str) -> Engine:
    try:
        return ENGINES[name]()
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; registered engines: {', '.join(ENGINES)}") from None


def decode_for(engines: Iterable[Engine], data: bytes, max_pixels: int) -> Image.Image:
    """Decode once, as small as the most demanding of `engines` allows."""
    sides = [engine.decode_side for engine in engines]
    return decode(data, min_side=None if None in sides else max(sides), max_pixels=max_pixels)


__all__ = ["ENGINES", "Engine", "FeatureSpec", "create_engine", "decode_for"]
