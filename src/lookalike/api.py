"""The HTTP service: a thin FastAPI layer over `Library`.

Handlers are plain `def`s, so FastAPI runs them in its thread pool and decoding, hashing and
FAISS searches never block the event loop.
"""

import asyncio
import contextlib
from typing import Annotated

from fastapi import Body, FastAPI, File, Form, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, model_validator

from .config import Settings
from .errors import ImageTooLarge, LookalikeError
from .library import Library, Match, check_image_id

K = Annotated[int | None, Field(ge=1, le=10_000)]
THRESHOLD = Annotated[float | None, Field(ge=0)]


class MatchOut(BaseModel):
    image_id: int
    distance: float
    file_name: str


class DeleteRequest(BaseModel):
    image_id: int | None = None
    file_name: str | None = None

    @model_validator(mode="after")
    def exactly_one(self):
        if (self.image_id is None) == (self.file_name is None):
            raise ValueError("give exactly one of image_id and file_name")
        return self


class SimilarByIdRequest(BaseModel):
    image_id: int
    k: K = None
    distance_threshold: THRESHOLD = None


def create_app(settings: Settings | None = None, library: Library | None = None) -> FastAPI:
    settings = settings or Settings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.library = library or Library(settings.data_dir, settings.engines, settings.max_pixels)
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

    # -- every engine at once --------------------------------------------------------------------

    @app.post("/images", status_code=201, tags=["all engines"])
    def add_everywhere(
        request: Request,
        image: UploadFile = File(),
        image_id: int = Form(),
        file_name: str | None = Form(None),
    ):
        """Add an image to every engine in one transaction."""
        return add(request, None, image, image_id, file_name)

    @app.delete("/images/{image_id}", tags=["all engines"])
    def delete_everywhere(request: Request, image_id: int):
        return delete(request, None, image_id, None)

    @app.delete("/images", tags=["all engines"])
    def delete_everywhere_by_name(request: Request, file_name: str = Query()):
        return delete(request, None, None, file_name)

    @app.post("/search", tags=["all engines"])
    def search_everywhere(
        request: Request,
        image: UploadFile = File(),
        k: K = Form(None),
        distance_threshold: THRESHOLD = Form(None),
    ) -> dict[str, list[MatchOut]]:
        """Every engine's answer for one image."""
        found = lib(request).search_all(read_upload(request, image), k, distance_threshold)
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
        image: UploadFile = File(),
        image_id: int = Form(),
        file_name: str | None = Form(None),
    ):
        return add(request, [engine], image, image_id, file_name)

    @app.delete("/engines/{engine}/images/{image_id}", tags=["one engine"])
    def delete_from_engine(request: Request, engine: str, image_id: int):
        return delete(request, [engine], image_id, None)

    @app.delete("/engines/{engine}/images", tags=["one engine"])
    def delete_from_engine_by_name(request: Request, engine: str, file_name: str = Query()):
        return delete(request, [engine], None, file_name)

    @app.get("/engines/{engine}/images/{image_id}/similar", tags=["one engine"])
    def similar_to_id(
        request: Request, engine: str, image_id: int, k: K = Query(None), distance_threshold: THRESHOLD = Query(None)
    ) -> list[MatchOut]:
        """Stored images like a stored one, itself left out."""
        return _out(lib(request).similar_to_id(engine, image_id, k, distance_threshold))

    @app.post("/engines/{engine}/search", tags=["one engine"])
    def similar_to_image(
        request: Request,
        engine: str,
        image: UploadFile = File(),
        k: K = Form(None),
        distance_threshold: THRESHOLD = Form(None),
    ) -> list[MatchOut]:
        return _out(lib(request).similar_to_image(engine, read_upload(request, image), k, distance_threshold))

    # -- the original per-engine services' endpoint names ----------------------------------------

    for engine in settings.engines:
        _add_legacy_routes(app, engine)
    return app


def _add_legacy_routes(app: FastAPI, engine: str) -> None:
    tags = [f"{engine} (original endpoint names)"]

    @app.post(f"/calculate_{engine}_features", tags=tags)
    def calculate(request: Request, image: UploadFile = File(), image_id: int = Form()):
        return add(request, [engine], image, image_id, None)

    @app.post(f"/delete_{engine}_features", tags=tags)
    def delete_features(request: Request, body: DeleteRequest = Body()):
        return delete(request, [engine], body.image_id, body.file_name)

    @app.post(f"/{engine}_get_similar_images_by_id", tags=tags)
    def by_id(request: Request, body: SimilarByIdRequest = Body()) -> list[MatchOut]:
        return _out(lib(request).similar_to_id(engine, body.image_id, body.k, body.distance_threshold))

    @app.post(f"/{engine}_get_similar_images_by_image_buffer", tags=tags)
    def by_image(
        request: Request, image: UploadFile = File(), k: K = Form(None), distance_threshold: THRESHOLD = Form(None)
    ) -> list[MatchOut]:
        return _out(lib(request).similar_to_image(engine, read_upload(request, image), k, distance_threshold))


def lib(request: Request) -> Library:
    return request.app.state.library


def read_upload(request: Request, image: UploadFile) -> bytes:
    limit = request.app.state.settings.max_upload_bytes
    data = image.file.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLarge(f"upload is larger than the limit of {limit} bytes")
    return data


def add(request: Request, engines: list[str] | None, image: UploadFile, image_id: int, file_name: str | None):
    check_image_id(image_id)
    lib(request).add(image_id, read_upload(request, image), file_name or image.filename or "", engines)
    return {"image_id": image_id}


def delete(request: Request, engines: list[str] | None, image_id: int | None, file_name: str | None):
    library = lib(request)
    image_id = library.id_for_name(file_name) if file_name is not None else image_id
    return {"image_id": image_id, "deleted_from": library.delete(image_id, engines)}


def _out(matches: list[Match]) -> list[MatchOut]:
    return [MatchOut(image_id=m.image_id, distance=m.distance, file_name=m.file_name) for m in matches]


async def _checkpoint_every(library: Library, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        await run_in_threadpool(library.checkpoint)
