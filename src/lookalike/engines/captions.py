"""Captions: a sentence about each photo ("a woman riding a bicycle down a street"), written by a
captioning model (BLIP base, downloaded on first use, or installed with `lookalike models install`),
kept as a text feature: its words are found through the text index as OCR'd words are.

No captioning weights ship in a package, so the engine is off until LOOKALIKE_CAPTION_MODEL names a
model (or LOOKALIKE_ENGINES names the engine); without the model's files it refuses to start, naming
them. Captioning costs seconds a photo on a CPU: the engine is slow, made in the background pass
where a library is built in two passes. The caption's meaning (`caption_embedding.py`) joins text
search beside the image-text engine.
"""

from functools import cached_property

from PIL import Image
from pydantic import Field, field_validator

from ..features import FeatureSpec, TextLine, TextLines
from ..models.captioners import CAPTION_MODELS, SharedCaptions, shared_captioner
from .base import Engine, EngineOptions, TextSearchable, known_name
from .text import words_query

DEFAULT_MODEL = "blip-base"


class CaptionOptions(EngineOptions):
    model: str = Field(DEFAULT_MODEL, validation_alias="caption_model")

    @field_validator("model")
    @classmethod
    def known(cls, model: str) -> str:
        return known_name(model, CAPTION_MODELS, "caption model")


class CaptionedEngine(Engine):
    """An engine whose feature comes from the photo's caption; the captioner is shared, so the
    engines of one library caption each photo once."""

    Options = CaptionOptions
    enabled_by_default = False
    slow = True

    def __init__(self, options: CaptionOptions | None = None):
        super().__init__(options)
        # The captioner squashes the photo to a square of this side: a larger decode adds nothing.
        self.decode_side = CAPTION_MODELS[self.options.model].side

    @cached_property
    def captioner(self) -> SharedCaptions:
        return shared_captioner(self.options.model, self.options.models_dir)

    def prepare(self) -> None:
        self.captioner


class Captions(CaptionedEngine, TextSearchable):
    name = "captions"
    # Relevance, not a distance: 1 is every word of the query found exactly.
    duplicate_threshold = 1.0

    def __init__(self, options: CaptionOptions | None = None):
        super().__init__(options)
        self.spec = FeatureSpec("text", 0, "words", model=self.options.model)

    def extract(self, image: Image.Image) -> TextLines:
        return self.extract_many([image])[0]

    def extract_many(self, images: list[Image.Image]) -> list[TextLines]:
        return [TextLines((TextLine(caption),) if caption else ()) for caption in self.captioner.caption(images)]

    def embed_text(self, text: str) -> TextLines:
        return words_query(text)
