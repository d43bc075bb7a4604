"""The HTTP service: one FastAPI app over one `Library`, its errors mapped to responses in one place."""

import asyncio
import contextlib
import logging

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException
from starlette.routing import Match

from ..background import BackgroundPass
from ..config import Settings
from ..decode import return_large_blocks_to_the_os
from ..duplicates import GroupsOfTheLibrary
from ..engines import ENGINES
from ..errors import Busy, LookalikeError
from ..library import Library
from . import access, legacy, routes
from .limits import UploadLimit
from .web import add_web_page

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, library: Library | None = None) -> FastAPI:
    settings = settings or Settings()
    access.check_exposure(settings)
    return_large_blocks_to_the_os()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.library = library or Library.from_settings(settings)
        await run_in_threadpool(app.state.library.prepare)  # models load before the first request, not during it
        saver = asyncio.create_task(_checkpoint_every(app.state.library, settings.checkpoint_seconds))
        app.state.duplicates = GroupsOfTheLibrary(app.state.library)
        app.state.background = BackgroundPass(app.state.library)
        app.state.background.start()  # the backlog a crash, a restart or `index --defer` left resumes now
        try:
            yield
        finally:
            saver.cancel()
            await run_in_threadpool(app.state.background.stop)
            await run_in_threadpool(app.state.library.close)

    app = FastAPI(
        title="lookalike",
        summary="Image retrieval for self-hosted photo galleries",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.add_middleware(UploadLimit, max_upload_bytes=settings.max_upload_bytes)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(access.TrustedHosts, hosts=access.trusted_hosts(settings))

    @app.exception_handler(LookalikeError)
    async def lookalike_error(request: Request, exc: LookalikeError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, Busy) else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if exc.status_code != 405:
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)
        # Starlette names only the methods of the first route that matched the path; name them all.
        allow = ", ".join(sorted(allowed_methods(request) | {"OPTIONS"}))
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": allow})
        return JSONResponse({"detail": exc.detail}, status_code=405, headers={"Allow": allow})

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes each bad input: an upload's bytes, or a NaN that JSON cannot carry.
        errors = [{key: value for key, value in error.items() if key != "input"} for error in exc.errors()]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    app.include_router(routes.router)
    app.include_router(routes.health_router)
    app.include_router(legacy.gateway_router)
    for name in settings.engines:
        legacy.add_original_routes(app, name, ENGINES[name])
    add_web_page(app)
    access.document_access(app, settings)
    return app


def allowed_methods(request: Request) -> set[str]:
    methods = set()
    for route in access.every_route(request.app.router.routes):
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return methods


async def _checkpoint_every(library: Library, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        try:
            await run_in_threadpool(library.checkpoint)
            await run_in_threadpool(library.maintain)
        except (OSError, LookalikeError) as exc:  # a full disk: the journal covers the gap; try again later
            log.warning("saving the indexes failed (%s); will retry in %g s", exc, seconds)
