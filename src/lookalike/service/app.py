"""The HTTP service: one FastAPI app over one `Library`, its errors mapped to responses in one place."""

import asyncio
import contextlib

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..config import Settings
from ..engines import ENGINES
from ..errors import LookalikeError
from ..library import Library
from . import legacy, routes


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

    app.include_router(routes.router)
    for name in settings.engines:
        legacy.add_original_routes(app, name, ENGINES[name])
    return app


async def _checkpoint_every(library: Library, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        await run_in_threadpool(library.checkpoint)
        await run_in_threadpool(library.maintain)
