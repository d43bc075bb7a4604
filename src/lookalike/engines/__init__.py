"""The engine registry: an engine is one module plus one line here."""

from collections.abc import Iterable

from PIL import Image

from .. import thumbnails
from ..decode import DEFAULT_MAX_PIXELS, UNLIMITED, DecodeBudget, decode_views
from ..errors import LookalikeError
from .base import Engine, EngineOptions, TextSearchable
from .caption_embedding import CaptionEmbedding
from .captions import Captions
from .color import ColorHistogram
from .global_features import GlobalFeatures
from .image_text import ImageText
from .local import LocalFeatures
from .phash import PHash
from .tags import Tags
from .text import Text

ENGINES: dict[str, type[Engine]] = {
    PHash.name: PHash,
    ColorHistogram.name: ColorHistogram,
    LocalFeatures.name: LocalFeatures,
    GlobalFeatures.name: GlobalFeatures,
    ImageText.name: ImageText,
    Tags.name: Tags,
    Text.name: Text,
    Captions.name: Captions,
    CaptionEmbedding.name: CaptionEmbedding,
}


def create_engine(name: str, options: EngineOptions | dict | None = None) -> Engine:
    """The engine called `name`, with its options (its `Options` model, or a dict of its fields)."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; registered engines: {', '.join(ENGINES)}")
    engine = ENGINES[name]
    return engine(engine.Options.model_validate(options or {}))


def extract_each(engine: Engine, images: list[Image.Image]) -> list:
    """The engine's feature of each image, as one model batch; where one image spoils the batch, image
    by image, with the LookalikeError in place of the feature of each image the engine cannot read."""
    try:
        return engine.extract_many(images)
    except LookalikeError:
        pass
    found = []
    for image in images:
        try:
            found.append(engine.extract(image))
        except LookalikeError as exc:
            found.append(exc)
    return found


def decode_for(
    engines: Iterable[Engine],
    data: bytes,
    max_pixels: int,
    budget: DecodeBudget = UNLIMITED,
    thumbnail: bool = False,
) -> dict[str, Image.Image]:
    """Each engine's image (name -> image), decoded as small as that engine allows: the same image
    whichever engines share the call; with `thumbnail`, also the view a thumbnail is made from (THUMBNAIL)."""
    engines = list(engines)
    sides = {engine.decode_side for engine in engines} | ({thumbnails.DECODE_SIDE} if thumbnail else set())
    views = decode_views(data, sides, max_pixels, budget)
    chosen = {engine.name: views[engine.decode_side] for engine in engines}
    return chosen | ({thumbnails.THUMBNAIL: views[thumbnails.DECODE_SIDE]} if thumbnail else {})


def decode_for_engine(
    engine: Engine, data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, budget: DecodeBudget = UNLIMITED
) -> Image.Image:
    """The image `engine` is given for `data`, by every route."""
    return decode_for([engine], data, max_pixels, budget)[engine.name]


__all__ = [
    "ENGINES",
    "Engine",
    "EngineOptions",
    "TextSearchable",
    "create_engine",
    "decode_for",
    "decode_for_engine",
    "extract_each",
]
