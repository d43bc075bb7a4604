"""Text: the words in a photo (signs, receipts, screenshots, book covers, number plates), read by OCR
and found through the text index by spelling, part of a word, a misspelling or its sound.

The feature is the lines read (`TextLines`): each line's text, the recogniser's confidence and its
box as fractions of the image, corners from the top left of the text as it reads. A typed query is
one line; an image query is the lines read from it, so "similar" means "carries the same words".
"""

from functools import cached_property

from PIL import Image
from pydantic import Field, field_validator

from ..errors import InvalidRequest
from ..features import FeatureSpec, TextLine, TextLines
from ..models.ocr import OCR_MODELS, Reading, TextReader
from .base import Engine, EngineOptions, TextSearchable, known_name

# Chosen on bench/ocr_recall.py's rendered words: a cutoff of 0.6 finds as many of them as 0.5 and
# keeps a sixth fewer lines read in photos without text (textures read as letters); see
# docs/benchmarks.md, "OCR text".
MIN_CONFIDENCE = 0.6
# A lone character is more often a texture read as a letter than a word: of the lines read in the 46
# test photos (as PNG), 16 of 21 were one character (a "1", an "O", a "音"), none of them text in the photo.
MIN_CHARACTERS = 2
DETECTION_SIDE = 640  # the longest side the detector sees; its cost grows with its square
MAX_QUERY_CHARACTERS = 1_000
BOX_DECIMALS = 4  # a ten-thousandth of the image: finer than any pixel of a decoded photo


class TextOptions(EngineOptions):
    model: str = Field("pp-ocrv6-small", validation_alias="text_model")
    detection_side: int = Field(DETECTION_SIDE, ge=160, le=4096, validation_alias="text_detection_side")

    @field_validator("model")
    @classmethod
    def known(cls, model: str) -> str:
        return known_name(model, OCR_MODELS, "OCR model")


class Text(Engine, TextSearchable):
    name = "text"
    slow = True
    Options = TextOptions
    # Recognition cuts its crops from this image (its smaller side), not from the detector's smaller one.
    decode_side = 1024
    # Relevance, not a distance: 1 is every word of the query's text found exactly, in large, sure text.
    duplicate_threshold = 1.0

    def __init__(self, options: TextOptions | None = None):
        super().__init__(options)
        self.spec = FeatureSpec("text", 0, "words", model=self.options.model)

    @cached_property
    def reader(self) -> TextReader:
        return TextReader(OCR_MODELS[self.options.model], self.options.models_dir, self.options.detection_side)

    def prepare(self) -> None:
        self.reader.load()

    def extract(self, image: Image.Image) -> TextLines:
        return lines_of(self.reader.read(image), image.size)

    def embed_text(self, text: str) -> TextLines:
        return words_query(text)


def words_query(text: str) -> TextLines:
    """A typed query of words, as one line (the text index looks each word up)."""
    if not text.strip():
        raise InvalidRequest("text must hold a word to look for")
    if len(text) > MAX_QUERY_CHARACTERS:
        raise InvalidRequest(f"text is {len(text)} characters; the limit is {MAX_QUERY_CHARACTERS}")
    return TextLines((TextLine(text),))


def lines_of(reading: Reading, size: tuple[int, int], min_confidence: float = MIN_CONFIDENCE) -> TextLines:
    """The confident lines of a reading, boxes as fractions of the image's width and height."""
    width, height = size
    return TextLines(
        tuple(
            TextLine(
                line.text,
                round(line.confidence, BOX_DECIMALS),
                tuple(
                    (round(float(x) / width, BOX_DECIMALS), round(float(y) / height, BOX_DECIMALS))
                    for x, y in line.corners
                ),
            )
            for line in reading.lines
            if line.confidence >= min_confidence and len(line.text.replace(" ", "")) >= MIN_CHARACTERS
        )
    )
