"""The engine registry: an engine is one module plus one line here."""

from collections.abc import Iterable

from PIL import Image

from ..decode import decode
from .base import Engine, EngineOptions, TextSearchable
from .color import ColorHistogram
from .global_features import GlobalFeatures
from .image_text import ImageText
from .local import LocalFeatures
from .phash import PHash
from .tags import Tags

ENGINES: dict[str, type[Engine]] = {
    PHash.name: PHash,
    ColorHistogram.name: ColorHistogram,
    LocalFeatures.name: LocalFeatures,
    GlobalFeatures.name: GlobalFeatures,
    ImageText.name: ImageText,
    Tags.name: Tags,
}


def create_engine(name: str, options: EngineOptions | dict | None = None) -> Engine:
    """The engine called `name`, with its options (its `Options` model, or a dict of its fields)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; registered engines: {', '.join(ENGINES)}")
    engine = ENGINES[name]
    return engine(engine.Options.model_validate(options or {}))


def decode_for(engines: Iterable[Engine], data: bytes, max_pixels: int) -> Image.Image:
    """Decode once, as small as the most demanding of `engines` allows."""
    sides = [engine.decode_side for engine in engines]
    return decode(data, min_side=None if None in sides else max(sides), max_pixels=max_pixels)


__all__ = ["ENGINES", "Engine", "EngineOptions", "TextSearchable", "create_engine", "decode_for"]
