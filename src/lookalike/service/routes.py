"""The service's routes: every engine at once, one engine by name, tags, and the service's own.

Handlers are plain `def`s, so FastAPI runs them in its thread pool and decoding, feature extraction
and index searches never block the event loop. The original services' endpoint names (`legacy.py`)
bind the same handlers to fixed engines.
"""

import hashlib
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, Path, Query, Request, Response, UploadFile

from .. import catalog
from ..errors import ImageTooLarge, InvalidRequest
from ..fusion import Verdict
from ..gateway import ReverseSearch, reverse_search, stored_search, text_search
from ..indexes import Hit
from ..library import Library
from ..store import MAX_FILE_NAME_BYTES, MAX_IMAGE_ID
from .access import can_read, can_write
from .params import (
    ADD_ERRORS,
    DELETE_ERRORS,
    IMAGE_SEARCH_ERRORS,
    MAX_K,
    READ_ERRORS,
    STORED_SEARCH_ERRORS,
    Added,
    AddForm,
    Deleted,
    DuplicatesOut,
    FusedSearchOut,
    FusedSearchParams,
    HitOut,
    ImageInfoOut,
    ImageSearchParams,
    Job,
    SearchParams,
    SimilarToText,
    TextLineOut,
    TextSearchBody,
    TextSearchOut,
)

router = APIRouter(dependencies=[Depends(can_read)])
# Open to anyone who reaches the service, key or not: a load balancer's or a container's probe.
health_router = APIRouter()
WRITES = [Depends(can_write)]
ImageFile = Annotated[UploadFile, File(description="The image: JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC or AVIF")]
EngineName = Annotated[str, Path(description="A served engine, e.g. phash")]
ImageIdPath = Annotated[int, Path(ge=0, le=MAX_IMAGE_ID)]
FileNameQuery = Annotated[
    str, Query(min_length=1, max_length=MAX_FILE_NAME_BYTES, description="The name the image was added with")
]
Hits = list[HitOut]


def library_of(request: Request) -> Library:
    return request.app.state.library


def read_upload(request: Request, image: UploadFile) -> bytes:
    limit = request.app.state.settings.max_upload_bytes
    data = image.file.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"upload is larger than the limit of {limit} bytes")
    return data


def hits_out(hits: list[Hit]) -> list[dict]:
    return [hit.as_dict() for hit in hits]


def add(request: Request, engines: list[str] | None, image: UploadFile, form: AddForm) -> Added:
    # Only an explicit file_name names the image: uploads from browsers are all called "blob".
    library_of(request).add(form.image_id, read_upload(request, image), form.file_name or "", engines, form.defer_slow)
    if form.defer_slow:
        request.app.state.background.wake()
    return Added(image_id=form.image_id)


def delete(request: Request, engines: list[str] | None, image_id: int | None, file_name: str | None = None) -> Deleted:
    library = library_of(request)
    image_id = library.id_for_name(file_name) if file_name is not None else image_id
    return Deleted(image_id=image_id, deleted_from=library.delete(image_id, engines))


def search_image(
    request: Request, engine: str, image: UploadFile, params: ImageSearchParams, original_names: bool = False
) -> list[dict]:
    library = library_of(request)
    k, threshold = params.for_engine(library.measure(engine), original_names)
    data = read_upload(request, image)
    return hits_out(library.similar_to_image(engine, data, k, threshold, params.mirrored, params.expansion()))


def search_id(
    request: Request, engine: str, image_id: int, params: SearchParams, original_names: bool = False
) -> list[dict]:
    library = library_of(request)
    k, threshold = params.for_engine(library.measure(engine), original_names)
    return hits_out(library.similar_to_id(engine, image_id, k, threshold, params.expansion()))


# -- every engine at once ------------------------------------------------------------------------


@router.post("/images", status_code=201, tags=["all engines"], dependencies=WRITES, responses=ADD_ERRORS)
def add_everywhere(request: Request, image: ImageFile, form: Annotated[AddForm, Form()]) -> Added:
    """Add an image to every engine in one transaction."""
    return add(request, None, image, form)


@router.delete("/images/{image_id}", tags=["all engines"], dependencies=WRITES, responses=DELETE_ERRORS)
def delete_everywhere(request: Request, image_id: ImageIdPath) -> Deleted:
    return delete(request, None, image_id)


@router.delete("/images", tags=["all engines"], dependencies=WRITES, responses=DELETE_ERRORS)
def delete_everywhere_by_name(request: Request, file_name: FileNameQuery) -> Deleted:
    return delete(request, None, None, file_name)


@router.post("/search", tags=["all engines"], response_model_exclude_none=True, responses=IMAGE_SEARCH_ERRORS)
def search_everywhere(
    request: Request, image: ImageFile, params: Annotated[FusedSearchParams, Form()]
) -> FusedSearchOut:
    """One ranked list from every engine, by calibrated evidence, with a verdict on each hit and on the
    whole: is this image already here (exact, near_duplicate, copy), or only something like it (similar)?"""
    return fused_out(reverse_search(library_of(request), read_upload(request, image), params.k))


@router.get(
    "/images/{image_id}/similar", tags=["all engines"], response_model_exclude_none=True, responses=STORED_SEARCH_ERRORS
)
def similar_everywhere(
    request: Request, image_id: ImageIdPath, params: Annotated[FusedSearchParams, Query()]
) -> FusedSearchOut:
    """`POST /search`'s answer for a stored image, from its stored features, itself left out (its mirror
    image is not looked at: its pixels are not kept)."""
    return fused_out(stored_search(library_of(request), image_id, params.k))


@router.post("/search_text", tags=["all engines"], response_model_exclude_none=True, responses=STORED_SEARCH_ERRORS)
def search_text_everywhere(request: Request, body: TextSearchBody) -> TextSearchOut:
    """Photos a text describes ("a dog on a beach"), by the better of the image-text engine's similarity
    and their caption's (where the caption engines are on), with every text engine's own list: tags
    named, words read in the photo (text), words of its caption (captions)."""
    found = text_search(library_of(request), body.text, body.k)
    lists = {engine: hits_out(hits[: body.k]) for engine, hits in found.found.items()}
    return {"hits": [hit.as_dict() for hit in found.hits], "found": lists}


def fused_out(found: ReverseSearch) -> dict:
    return {"verdict": found.verdict, "hits": [hit.as_dict() for hit in found.hits]}


@router.get("/duplicates", tags=["all engines"], responses=READ_ERRORS)
def duplicates(
    request: Request,
    tier: Annotated[Verdict, Query(description="The weakest tier to group by.")] = Verdict.NEAR_DUPLICATE,
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_K)] = 100,
) -> DuplicatesOut:
    """Groups of duplicates across the library, each pair with its tier; strongest tiers and largest
    groups first. A group's every pair is within its tier: a burst of similar shots is `similar`."""
    if tier is Verdict.NONE:
        raise InvalidRequest("tier none groups nothing: give exact, near_duplicate, copy or similar")
    groups = request.app.state.duplicates.groups(tier)
    return {"total": len(groups), "groups": [group.as_dict() for group in groups[offset : offset + limit]]}


@router.get("/images/{image_id}", tags=["all engines"], responses=STORED_SEARCH_ERRORS)
def image_info(request: Request, image_id: ImageIdPath) -> ImageInfoOut:
    return asdict(catalog.describe(library_of(request), image_id))


@router.get(
    "/images/{image_id}/thumbnail",
    tags=["all engines"],
    response_class=Response,
    responses={200: {"content": {"image/webp": {}}, "description": "A WebP, its long side 256 px"}}
    | STORED_SEARCH_ERRORS,
)
def thumbnail(request: Request, image_id: ImageIdPath) -> Response:
    """The image's thumbnail, made when it was added (or now, for an image stored before thumbnails were)."""
    webp = catalog.thumbnail(library_of(request), image_id).webp
    # An id may be deleted and added again as another photo: browsers keep the bytes but ask each time.
    tag = f'"{hashlib.blake2b(webp, digest_size=12).hexdigest()}"'
    headers = {"ETag": tag, "Cache-Control": "private, no-cache"}
    if tag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(webp, media_type="image/webp", headers=headers)


@router.get("/stats", tags=["service"], responses=READ_ERRORS)
def stats(request: Request):
    return catalog.stats(library_of(request))


@router.get("/jobs", tags=["service"], responses=READ_ERRORS)
def jobs(request: Request) -> dict[str, Job]:
    """The background pass: each slow engine's backlog (images added with defer_slow, or indexed with
    `lookalike index --defer`, still without its feature), features made per second over the last two
    minutes, and the seconds left at that rate."""
    return request.app.state.background.jobs()


@health_router.get("/health", tags=["service"])
async def health():
    return {"status": "ok"}


# -- one engine ----------------------------------------------------------------------------------


@router.post(
    "/engines/{engine}/images", status_code=201, tags=["one engine"], dependencies=WRITES, responses=ADD_ERRORS
)
def add_to_engine(request: Request, engine: EngineName, image: ImageFile, form: Annotated[AddForm, Form()]) -> Added:
    return add(request, [engine], image, form)


@router.delete("/engines/{engine}/images/{image_id}", tags=["one engine"], dependencies=WRITES, responses=DELETE_ERRORS)
def delete_from_engine(request: Request, engine: EngineName, image_id: ImageIdPath) -> Deleted:
    return delete(request, [engine], image_id)


@router.delete("/engines/{engine}/images", tags=["one engine"], dependencies=WRITES, responses=DELETE_ERRORS)
def delete_from_engine_by_name(request: Request, engine: EngineName, file_name: FileNameQuery) -> Deleted:
    return delete(request, [engine], None, file_name)


@router.get(
    "/engines/{engine}/images/{image_id}/similar",
    tags=["one engine"],
    response_model_exclude_none=True,
    responses=STORED_SEARCH_ERRORS,
)
def similar_to_id(
    request: Request, engine: EngineName, image_id: ImageIdPath, params: Annotated[SearchParams, Query()]
) -> Hits:
    """Stored images like a stored one, itself left out."""
    return search_id(request, engine, image_id, params)


@router.post(
    "/engines/{engine}/search", tags=["one engine"], response_model_exclude_none=True, responses=IMAGE_SEARCH_ERRORS
)
def similar_to_image(
    request: Request, engine: EngineName, image: ImageFile, params: Annotated[ImageSearchParams, Form()]
) -> Hits:
    """Stored images like an uploaded one."""
    return search_image(request, engine, image, params)


@router.post(
    "/engines/{engine}/search_text",
    tags=["one engine"],
    response_model_exclude_none=True,
    responses=STORED_SEARCH_ERRORS,
)
def similar_to_text(request: Request, engine: EngineName, body: SimilarToText) -> Hits:
    """Stored images a text describes (image_text), or that carry the tags it names (tags)."""
    library = library_of(request)
    k, threshold = body.for_engine(library.measure(engine))
    return hits_out(library.similar_to_text(engine, body.text, k, threshold, body.expansion()))


# -- tags ----------------------------------------------------------------------------------------


@router.post("/get_image_tags", tags=["tags"], responses=IMAGE_SEARCH_ERRORS)
def image_tags(request: Request, image: ImageFile) -> list[str]:
    """The tags of an uploaded image (not stored): what the classifier is confident it shows."""
    return library_of(request).tags_of_image(read_upload(request, image))


@router.get("/images/{image_id}/tags", tags=["tags"], responses=STORED_SEARCH_ERRORS)
def stored_tags(request: Request, image_id: ImageIdPath) -> list[str]:
    return library_of(request).tags_of_id(image_id)


# -- text ----------------------------------------------------------------------------------------


@router.post("/get_image_text", tags=["text"], responses=IMAGE_SEARCH_ERRORS)
def image_text_lines(request: Request, image: ImageFile) -> list[TextLineOut]:
    """The lines of text read in an uploaded image (not stored), with where each is."""
    return TextLineOut.of(library_of(request).feature_of_image("text", read_upload(request, image)))


@router.get("/images/{image_id}/text", tags=["text"], responses=STORED_SEARCH_ERRORS)
def stored_text(request: Request, image_id: ImageIdPath) -> list[TextLineOut]:
    """The lines of text read in a stored image, with where each is."""
    return TextLineOut.of(library_of(request).feature_of_id("text", image_id))


# -- captions ------------------------------------------------------------------------------------


@router.post("/get_image_caption", tags=["captions"], responses=IMAGE_SEARCH_ERRORS)
def image_caption(request: Request, image: ImageFile) -> str:
    """A caption of an uploaded image (not stored), as the original service answered: the sentence."""
    return library_of(request).feature_of_image("captions", read_upload(request, image)).text


@router.get("/images/{image_id}/caption", tags=["captions"], responses=STORED_SEARCH_ERRORS)
def stored_caption(request: Request, image_id: ImageIdPath) -> str:
    """The caption of a stored image (404 while the background pass has not written it yet)."""
    return library_of(request).feature_of_id("captions", image_id).text
