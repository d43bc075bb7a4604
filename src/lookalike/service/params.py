"""What requests carry, declared once and used as a JSON body, a multipart form or a query string alike:
a new search option is one field here."""

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import InvalidRequest
from ..fusion import Verdict
from ..indexes import Measure
from ..library import QueryExpansion
from ..store import MAX_FILE_NAME_BYTES, MAX_IMAGE_ID

MAX_K = 10_000
MAX_EXPANSION = 100
MAX_TEXT_CHARACTERS = 1_000
ImageId = Annotated[int, Field(ge=0, le=MAX_IMAGE_ID)]
# The byte limit is checked on the UTF-8 bytes (`library.check_file_name`); this bounds the characters.
FileName = Annotated[
    str, Field(min_length=1, max_length=MAX_FILE_NAME_BYTES, description="The name the image was added with.")
]
# The field that bounds each measure's score, from below or above as the measure goes.
THRESHOLD_FIELDS = {
    Measure.DISTANCE: "distance_threshold",
    Measure.MATCHES: "min_matches",
    Measure.RELEVANCE: "min_relevance",
}


CUTOFFS = ["k", *THRESHOLD_FIELDS.values()]


def exactly_one_of(*fields: str):
    """A model's JSON schema extra: exactly one of `fields` is given, as a number (null is not one)."""

    def extra(schema: dict) -> None:
        for field in CUTOFFS:
            declared = schema["properties"][field]
            declared.update(next(t for t in declared.pop("anyOf") if t.get("type") != "null"))
            declared.pop("default", None)
        schema["oneOf"] = [{"required": [field]} for field in fields]

    return extra


class SearchParams(BaseModel):
    """How many hits to return, or how good they must be; and query expansion, for embeddings."""

    model_config = ConfigDict(json_schema_extra=exactly_one_of(*CUTOFFS))

    k: int | None = Field(None, ge=1, le=MAX_K, description="The k best.")
    distance_threshold: float | None = Field(
        None,
        ge=0,
        allow_inf_nan=False,
        description="Every image at this distance or nearer (engines scored by distance). The original "
        "endpoint names take it as the cutoff of any engine: the fewest matches for local features.",
    )
    min_matches: int | None = Field(
        None, ge=1, le=MAX_K, description="Every image with at least this many verified matches (local features)."
    )
    min_relevance: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Every image at least this relevant (engines scored by relevance)."
    )
    aqe_n: int = Field(
        0,
        ge=0,
        le=MAX_EXPANSION,
        description="Alpha query expansion (embeddings): search again with the query and this many nearest neighbours.",
    )
    aqe_alpha: float = Field(
        3.0,
        ge=0,
        le=100,
        allow_inf_nan=False,
        description="Alpha query expansion: each neighbour's weight is its similarity to this power.",
    )

    @model_validator(mode="before")
    @classmethod
    def cutoffs_are_numbers(cls, given):
        if isinstance(given, dict) and any(field in given and given[field] is None for field in CUTOFFS):
            raise ValueError(f"give {' or '.join(CUTOFFS)} as a number, or leave it out (not null)")
        return given

    def expansion(self) -> QueryExpansion | None:
        return QueryExpansion(self.aqe_n, self.aqe_alpha) if self.aqe_n else None

    def for_engine(self, measure: Measure, original_names: bool = False) -> tuple[int | None, float | None]:
        """(k, threshold) for one engine whose hits are scored by `measure`: exactly one must be given,
        and no threshold of another measure."""
        field = THRESHOLD_FIELDS[measure]
        if original_names and getattr(self, field) is None and self.distance_threshold is not None:
            field = "distance_threshold"  # the original services had no other cutoff field
        stray = [other for other in THRESHOLD_FIELDS.values() if other != field and getattr(self, other) is not None]
        if stray:
            raise InvalidRequest(f"this engine's hits are scored by {measure}: give k or {field}, not {stray[0]}")
        threshold = getattr(self, field)
        if (self.k is None) == (threshold is None):
            raise InvalidRequest(f"give exactly one of k and {field}")
        return self.k, threshold


class ImageSearchParams(SearchParams):
    mirrored: bool = Field(False, description="Also search with the mirror image (local features).")


class FusedSearchParams(BaseModel):
    k: int = Field(20, ge=1, le=MAX_K, description="The k best, by fused evidence.")


class JsonBody(BaseModel):
    """A JSON body takes its numbers as JSON numbers: "1001", 1002.0 and true are not ids."""

    model_config = ConfigDict(strict=True)


class SimilarToId(SearchParams, JsonBody):
    image_id: ImageId


class SimilarToText(SearchParams, JsonBody):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARACTERS)


class TextSearchBody(JsonBody):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARACTERS)
    k: int = Field(20, ge=1, le=MAX_K, description="The k best described photos.")


class TextHitOut(BaseModel):
    image_id: int
    file_name: str
    similarity: float = Field(description="The best of image_text's and caption_embedding's cosine similarity.")
    engines: dict[str, float] = Field(
        description="Each engine that listed it: a similarity (image_text, caption_embedding, tags) or the "
        "relevance of the words found (text: words read in the photo; captions: words of its caption)."
    )


class AddForm(BaseModel):
    image_id: ImageId
    file_name: str | None = Field(None, max_length=MAX_FILE_NAME_BYTES, description="Name to find the image by.")
    defer_slow: bool = Field(
        False,
        description="Answer once the fast engines have the image; the slow ones (local features, OCR text, "
        "captions) make theirs in the background from the bytes kept meanwhile (GET /jobs shows the backlog).",
    )


class DeleteRequest(JsonBody):
    model_config = ConfigDict(json_schema_extra={"oneOf": [{"required": ["image_id"]}, {"required": ["file_name"]}]})

    image_id: ImageId | None = None
    file_name: FileName | None = None

    @model_validator(mode="after")
    def exactly_one(self):
        if (self.image_id is None) == (self.file_name is None):
            raise ValueError("give exactly one of image_id and file_name")
        return self


class ImageOut(BaseModel):
    image_id: int
    file_name: str


PRECISE_MATCHES = (
    "Local features: of the matches, those one similarity transform places within a pixel. A copy (crop, turn, "
    "border) keeps nearly all of its matches precise; another shot of the same scene keeps few."
)


class HitOut(BaseModel):
    """A found image; its score is one of distance, matches and relevance, as its engine measures."""

    image_id: int
    distance: float | None = Field(None, description="Engines scored by distance: smaller is nearer.")
    matches: int | None = Field(None, description="Local features: keypoint matches one homography explains.")
    relevance: float | None = Field(None, description="Engines scored by relevance (text): larger is better.")
    precise_matches: int | None = Field(None, description=PRECISE_MATCHES)
    file_name: str


class EvidenceOut(BaseModel):
    """What one engine said of a fused hit."""

    rank: int = Field(description="Its place in the engine's own list, from 1.")
    distance: float | None = None
    matches: int | None = None
    relevance: float | None = None
    precise_matches: int | None = Field(None, description=PRECISE_MATCHES)
    weight: float = Field(description="The log likelihood ratio of 'same source photo' the score carries.")


class FusedHitOut(BaseModel):
    image_id: int
    file_name: str
    score: float = Field(description="Summed log-odds of every engine's evidence, listed or not: larger is surer.")
    verdict: Verdict
    evidence: dict[str, EvidenceOut] = Field(description="Each engine that listed it, by engine name.")


class TextSearchOut(BaseModel):
    hits: list[TextHitOut] = Field(description="The photos the text describes, best first.")
    found: dict[str, list[HitOut]] = Field(description="Each text engine's own list, best first.")


class FusedSearchOut(BaseModel):
    verdict: Verdict = Field(description="The best hit's: is this image already here, and how.")
    hits: list[FusedHitOut]


class ImageInfoOut(BaseModel):
    """What the library holds of an image."""

    image_id: int
    file_name: str
    width: int | None = Field(description="The original's width, upright (null: stored before thumbnails were).")
    height: int | None
    bytes: int | None = Field(description="The original's size in bytes.")
    engines: list[str] = Field(description="The engines holding its feature.")
    pending: list[str] = Field(description="The engines the background pass still owes its feature (GET /jobs).")


class PairOut(BaseModel):
    images: tuple[int, int]
    tier: Verdict
    distances: dict[str, float] = Field(description="Each engine's distance between the two.")
    evidence: float = Field(description="Summed log-odds of 'same source photo'.")
    precise_matches: int | None = Field(None, description=PRECISE_MATCHES)


class GroupOut(BaseModel):
    tier: Verdict = Field(description="The weakest tier among its pairs.")
    images: list[ImageOut]
    pairs: list[PairOut]


class DuplicatesOut(BaseModel):
    total: int = Field(description="Groups in all, before paging.")
    groups: list[GroupOut]


class TextLineOut(BaseModel):
    """A line of text read in an image."""

    text: str
    confidence: float = Field(description="How sure the reader was, 0 to 1.")
    box: list[tuple[float, float]] = Field(
        description="The corners (x, y) as fractions of the image's width and height, clockwise from the top "
        "left of the text as it reads (an upside-down line starts at the image's lower right)."
    )

    @classmethod
    def of(cls, lines) -> list["TextLineOut"]:
        return [cls(text=line.text, confidence=line.confidence, box=list(line.box)) for line in lines]


class Added(BaseModel):
    image_id: int


class Deleted(BaseModel):
    image_id: int
    deleted_from: list[str] = Field(description="The engines it was deleted from.")


class Job(BaseModel):
    backlog: int = Field(description="Images still without this engine's feature.")
    per_second: float = Field(description="Features made per second over the last two minutes.")
    eta_seconds: int | None = Field(description="Seconds until the backlog is empty at that rate.")


class ErrorOut(BaseModel):
    detail: str | list[dict] = Field(description="What was wrong: a message, or (422) each invalid field.")


_ERRORS = {
    400: "Not an image, or one that cannot be decoded.",
    401: "The API key is missing or wrong.",
    403: "A write from another site's page.",
    404: "No such image, file name or engine.",
    409: "The image id or file name is taken.",
    413: "The upload or the image is over the limit.",
    422: "Invalid parameters.",
    503: "Busy decoding other large images (see Retry-After), a model is not installed, or Milvus is out of reach.",
    507: "The disk is full: nothing was written.",
}


def errors(*statuses: int) -> dict:
    """OpenAPI `responses` for these error statuses, so generated clients know every answer."""
    return {status: {"model": ErrorOut, "description": _ERRORS[status]} for status in statuses}


ADD_ERRORS = errors(400, 401, 403, 404, 409, 413, 422, 503, 507)
DELETE_ERRORS = errors(401, 403, 404, 422, 507)
IMAGE_SEARCH_ERRORS = errors(400, 401, 404, 413, 422, 503)
STORED_SEARCH_ERRORS = errors(401, 404, 422, 503)
READ_ERRORS = errors(401, 422)
