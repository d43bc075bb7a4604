"""The HTTP service: a thin FastAPI layer over `Library`.

Handlers are plain `def`s, so FastAPI runs them in its thread pool and decoding, hashing and
FAISS searches never block the event loop.
"""

import asyncio
import contextlib
from typing import Annotated

from fastapi import Body, FastAPI, File, Form, Path, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

from .config import Settings
from .engines import ENGINES, TextSearchable
from .errors import ImageTooLarge, LookalikeError
from .library import Library, Match, QueryExpansion
from .store import MAX_IMAGE_ID

MAX_K = 10_000
# The same bounds for JSON bodies (Field), multipart forms (Form), query strings and paths.
K = Annotated[int | None, Field(ge=1, le=MAX_K)]
Threshold = Annotated[float | None, Field(ge=0, allow_inf_nan=False)]
ImageId = Annotated[int, Field(ge=0, le=MAX_IMAGE_ID)]
KForm = Annotated[int | None, Form(ge=1, le=MAX_K)]
ThresholdForm = Annotated[
    float | None,
    Form(ge=0, allow_inf_nan=False, description="Largest distance; for local features the fewest matches"),
]
MirroredForm = Annotated[bool, Form(description="Also search with the mirror image (local features)")]
MAX_EXPANSION = 100
_AQE_N = "Alpha query expansion: search again with the query plus this many nearest neighbours (embeddings)"
_AQE_ALPHA = "Alpha query expansion: each neighbour's weight is its similarity to this power"
AqeN = Annotated[int, Field(ge=0, le=MAX_EXPANSION, description=_AQE_N)]
AqeAlpha = Annotated[float, Field(ge=0, le=100, allow_inf_nan=False, description=_AQE_ALPHA)]
AqeNForm = Annotated[int, Form(ge=0, le=MAX_EXPANSION, description=_AQE_N)]
AqeAlphaForm = Annotated[float, Form(ge=0, le=100, allow_inf_nan=False, description=_AQE_ALPHA)]
AqeNQuery = Annotated[int, Query(ge=0, le=MAX_EXPANSION, description=_AQE_N)]
AqeAlphaQuery = Annotated[float, Query(ge=0, le=100, allow_inf_nan=False, description=_AQE_ALPHA)]
KQuery = Annotated[int | None, Query(ge=1, le=MAX_K)]
ThresholdQuery = Annotated[float | None, Query(ge=0, allow_inf_nan=False)]
ImageIdForm = Annotated[int, Form(ge=0, le=MAX_IMAGE_ID)]
ImageIdPath = Annotated[int, Path(ge=0, le=MAX_IMAGE_ID)]
FileNameForm = Annotated[str | None, Form(description="Name to find the image by; optional")]
ImageFile = Annotated[UploadFile, File(description="The image: JPEG, PNG, WebP, GIF, BMP, TIFF, HEIC or AVIF")]


class MatchOut(BaseModel):
    image_id: int
    distance: float | None = Field(None, description="every engine but local: smaller is nearer")
    matches: int | None = Field(None, description="local: keypoint matches one homography explains; more is better")
    file_name: str


class DeleteRequest(BaseModel):
    image_id: ImageId | None = None
    file_name: str | None = None

    @model_validator(mode="after")
    def exactly_one(self):
        if (self.image_id is None) == (self.file_name is None):
            raise ValueError("give exactly one of image_id and file_name")
        return self


class SimilarByIdRequest(BaseModel):
    image_id: ImageId
    k: K = None
    distance_threshold: Threshold = None
    aqe_n: AqeN = 0
    aqe_alpha: AqeAlpha = 3.0


class SimilarByTextRequest(BaseModel):
    text: str = Field(min_length=1, max_length=1_000)
    k: K = None
    distance_threshold: Threshold = None


def create_app(settings: Settings | None = None, library: Library | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.library = library or Library.from_settings(settings)
        await run_in_threadpool(app.state.library.prepare)  # models load before the first request, not during it
        saver = asyncio.create_task(_checkpoint_every(app.state.library, settings.checkpoint_seconds))
        try:
            yield
        finally:
            saver.cancel()
            await run_in_threadpool(app.state.library.close)

    app = FastAPI(title="lookalike", summary="Image retrieval for self-hosted photo galleries", lifespan=lifespan)
    app.state.settings = settings

    @app.exception_handler(LookalikeError)
    async def lookalike_error(request: Request, exc: LookalikeError) -> JSONResponse:
        return JSONResponse({"detail": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each bad input: an upload's bytes, or a NaN that JSON cannot carry.
        errors = [{key: value for key, value in error.items() if key != "input"} for error in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    # -- every engine at once --------------------------------------------------------------------

    @app.post("/images", status_code=201, tags=["all engines"])
    def add_everywhere(
        request: Request,
        image: ImageFile,
        image_id: ImageIdForm,
        file_name: FileNameForm = None,
    ):
        """Add an image to every engine in one transaction."""
        return add(request, None, image, image_id, file_name)

    @app.delete("/images/{image_id}", tags=["all engines"])
    def delete_everywhere(request: Request, image_id: ImageIdPath):
        return delete(request, None, image_id, None)

    @app.delete("/images", tags=["all engines"])
    def delete_everywhere_by_name(request: Request, file_name: str = Query()):
        return delete(request, None, None, file_name)

    @app.post("/search", tags=["all engines"], response_model_exclude_none=True)
    def search_everywhere(
        request: Request,
        image: ImageFile,
        k: KForm = None,
        distance_threshold: ThresholdForm = None,
        mirrored: MirroredForm = False,
    ) -> dict[str, list[MatchOut]]:
        """Every engine's answer for one image."""
        found = lib(request).search_all(read_upload(request, image), k, distance_threshold, mirrored)
        return {name: _out(matches) for name, matches in found.items()}

    @app.get("/stats", tags=["service"])
    def stats(request: Request):
        return lib(request).stats()

    @app.get("/health", tags=["service"])
    async def health():
        return {"status": "ok"}

    # -- one engine ------------------------------------------------------------------------------

    @app.post("/engines/{engine}/images", status_code=201, tags=["one engine"])
    def add_to_engine(
        request: Request,
        engine: str,
        image: ImageFile,
        image_id: ImageIdForm,
        file_name: FileNameForm = None,
    ):
        return add(request, [engine], image, image_id, file_name)

    @app.delete("/engines/{engine}/images/{image_id}", tags=["one engine"])
    def delete_from_engine(request: Request, engine: str, image_id: ImageIdPath):
        return delete(request, [engine], image_id, None)

    @app.delete("/engines/{engine}/images", tags=["one engine"])
    def delete_from_engine_by_name(request: Request, engine: str, file_name: str = Query()):
        return delete(request, [engine], None, file_name)

    @app.get("/engines/{engine}/images/{image_id}/similar", tags=["one engine"], response_model_exclude_none=True)
    def similar_to_id(
        request: Request,
        engine: str,
        image_id: ImageIdPath,
        k: KQuery = None,
        distance_threshold: ThresholdQuery = None,
        aqe_n: AqeNQuery = 0,
        aqe_alpha: AqeAlphaQuery = 3.0,
    ) -> list[MatchOut]:
        """Stored images like a stored one, itself left out."""
        expansion = _expansion(aqe_n, aqe_alpha)
        return _out(lib(request).similar_to_id(engine, image_id, k, distance_threshold, expansion))

    @app.post("/engines/{engine}/search", tags=["one engine"], response_model_exclude_none=True)
    def similar_to_image(
        request: Request,
        engine: str,
        image: ImageFile,
        k: KForm = None,
        distance_threshold: ThresholdForm = None,
        mirrored: MirroredForm = False,
        aqe_n: AqeNForm = 0,
        aqe_alpha: AqeAlphaForm = 3.0,
    ) -> list[MatchOut]:
        data = read_upload(request, image)
        expansion = _expansion(aqe_n, aqe_alpha)
        return _out(lib(request).similar_to_image(engine, data, k, distance_threshold, mirrored, expansion))

    @app.post("/engines/{engine}/search_text", tags=["one engine"], response_model_exclude_none=True)
    def similar_to_text(request: Request, engine: str, body: SimilarByTextRequest = Body()) -> list[MatchOut]:
        """Stored images a text describes (image_text), or that carry the tags it names (tags)."""
        return _out(lib(request).similar_to_text(engine, body.text, body.k, body.distance_threshold))

    # -- tags ------------------------------------------------------------------------------------

    @app.post("/get_image_tags", tags=["tags"])
    def image_tags(request: Request, image: ImageFile) -> list[str]:
        """The tags of an uploaded image (not stored): what the classifier is confident it shows."""
        return lib(request).tags_of_image(read_upload(request, image))

    @app.get("/images/{image_id}/tags", tags=["tags"])
    def stored_tags(request: Request, image_id: ImageIdPath) -> list[str]:
        return lib(request).tags_of_id(image_id)

    # -- the original per-engine services' endpoint names ----------------------------------------

    for engine in settings.engines:
        _add_legacy_routes(app, engine, ENGINES[engine].service_name or engine)
    return app


def _add_legacy_routes(app: FastAPI, engine: str, service: str) -> None:
    tags = [f"{engine} (original endpoint names)"]

    @app.post(f"/calculate_{engine}_features", tags=tags)
    def calculate(request: Request, image: ImageFile, image_id: ImageIdForm, file_name: FileNameForm = None):
        return add(request, [engine], image, image_id, file_name)

    @app.post(f"/delete_{engine}_features", tags=tags)
    def delete_features(request: Request, body: DeleteRequest = Body()):
        return delete(request, [engine], body.image_id, body.file_name)

    @app.post(f"/{service}_get_similar_images_by_id", tags=tags, response_model_exclude_none=True)
    def by_id(request: Request, body: SimilarByIdRequest = Body()) -> list[MatchOut]:
        expansion = _expansion(body.aqe_n, body.aqe_alpha)
        return _out(lib(request).similar_to_id(engine, body.image_id, body.k, body.distance_threshold, expansion))

    @app.post(f"/{service}_get_similar_images_by_image_buffer", tags=tags, response_model_exclude_none=True)
    def by_image(
        request: Request,
        image: ImageFile,
        k: KForm = None,
        distance_threshold: ThresholdForm = None,
        mirrored: MirroredForm = False,
        aqe_n: AqeNForm = 0,
        aqe_alpha: AqeAlphaForm = 3.0,
    ) -> list[MatchOut]:
        data = read_upload(request, image)
        expansion = _expansion(aqe_n, aqe_alpha)
        return _out(lib(request).similar_to_image(engine, data, k, distance_threshold, mirrored, expansion))

    if issubclass(ENGINES[engine], TextSearchable):

        @app.post(f"/{service}_get_similar_images_by_text", tags=tags, response_model_exclude_none=True)
        def by_text(request: Request, body: SimilarByTextRequest = Body()) -> list[MatchOut]:
            return _out(lib(request).similar_to_text(engine, body.text, body.k, body.distance_threshold))


def lib(request: Request) -> Library:
    return request.app.state.library


def read_upload(request: Request, image: UploadFile) -> bytes:
    limit = request.app.state.settings.max_upload_bytes
    data = image.file.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"upload is larger than the limit of {limit} bytes")
    return data


def add(request: Request, engines: list[str] | None, image: UploadFile, image_id: int, file_name: str | None):
    # Only an explicit file_name names the image: uploads from browsers are all called "blob".
    lib(request).add(image_id, read_upload(request, image), file_name or "", engines)
    return {"image_id": image_id}


def delete(request: Request, engines: list[str] | None, image_id: int | None, file_name: str | None):
    library = lib(request)
    image_id = library.id_for_name(file_name) if file_name is not None else image_id
    return {"image_id": image_id, "deleted_from": library.delete(image_id, engines)}


def _expansion(neighbours: int, alpha: float) -> QueryExpansion | None:
    return QueryExpansion(neighbours, alpha) if neighbours else None


def _out(matches: list[Match]) -> list[MatchOut]:
    return [
        MatchOut(image_id=m.image_id, distance=m.distance, matches=m.matches, file_name=m.file_name) for m in matches
    ]


async def _checkpoint_every(library: Library, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        await run_in_threadpool(library.checkpoint)
        await run_in_threadpool(library.maintain)
