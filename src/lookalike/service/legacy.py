"""The original services' endpoint names, so a gallery written for them works unchanged.

Each row of ORIGINAL_ROUTES binds one per-engine name to a handler with the engine fixed; the handlers
are the generic routes' own, or thin adapters where the original took its arguments in another shape
(a JSON body instead of a path, any cutoff as `distance_threshold`). `gateway_router` holds the
original gateway's three routes over every engine.
"""

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, Form, Request

from ..engines import Engine, TextSearchable
from ..fusion import PER_ENGINE
from ..gateway import reverse_search
from . import routes
from .access import can_read, can_write
from .params import (
    ADD_ERRORS,
    DELETE_ERRORS,
    IMAGE_SEARCH_ERRORS,
    STORED_SEARCH_ERRORS,
    Added,
    AddForm,
    Deleted,
    DeleteRequest,
    FusedSearchOut,
    HitOut,
    ImageSearchParams,
    SimilarToId,
)

# The original services' names in their search endpoints, where not the engine's own.
SERVICE_NAMES = {"local": "local_features", "global": "global_features", "image_text": "image_text_features"}


def delete_by_body(request: Request, engine: str, body: DeleteRequest) -> Deleted:
    return routes.delete(request, [engine], body.image_id, body.file_name)


def similar_to_id_by_body(request: Request, engine: str, body: SimilarToId) -> routes.Hits:
    return routes.search_id(request, engine, body.image_id, body, original_names=True)


def similar_to_image_buffer(
    request: Request, engine: str, image: routes.ImageFile, params: Annotated[ImageSearchParams, Form()]
) -> routes.Hits:
    return routes.search_image(request, engine, image, params, original_names=True)


@dataclass(frozen=True)
class OriginalRoute:
    path: str  # {engine} and {service} are filled in per engine
    handler: Callable
    responses: dict
    status_code: int = 200
    writes: bool = False
    text_search: bool = False  # only for engines that answer text queries


ORIGINAL_ROUTES = [
    OriginalRoute("/calculate_{engine}_features", routes.add_to_engine, ADD_ERRORS, writes=True),
    OriginalRoute("/delete_{engine}_features", delete_by_body, DELETE_ERRORS, writes=True),
    OriginalRoute("/{service}_get_similar_images_by_id", similar_to_id_by_body, STORED_SEARCH_ERRORS),
    OriginalRoute("/{service}_get_similar_images_by_image_buffer", similar_to_image_buffer, IMAGE_SEARCH_ERRORS),
    OriginalRoute(
        "/{service}_get_similar_images_by_text", routes.similar_to_text, STORED_SEARCH_ERRORS, text_search=True
    ),
]


def add_original_routes(app: FastAPI, name: str, engine: type[Engine]) -> None:
    service = SERVICE_NAMES.get(name, name)
    for route in ORIGINAL_ROUTES:
        if route.text_search and not issubclass(engine, TextSearchable):
            continue
        path = route.path.format(engine=name, service=service)
        app.add_api_route(
            path,
            for_engine(route.handler, name),
            methods=["POST"],
            status_code=route.status_code,
            responses=route.responses,
            dependencies=[Depends(can_read)] + ([Depends(can_write)] if route.writes else []),
            tags=[f"{name} (original endpoint names)"],
            response_model_exclude_none=True,
            operation_id=path.strip("/"),
        )


def for_engine(handler: Callable, engine: str) -> Callable:
    """`handler` with its `engine` parameter fixed, and gone from the signature FastAPI reads."""

    def endpoint(**arguments):
        return handler(engine=engine, **arguments)

    signature = inspect.signature(handler)
    endpoint.__signature__ = signature.replace(
        parameters=[parameter for parameter in signature.parameters.values() if parameter.name != "engine"]
    )
    endpoint.__doc__ = handler.__doc__
    return endpoint


# -- the original gateway ------------------------------------------------------------------------

gateway_router = APIRouter(dependencies=[Depends(can_read)], tags=["every engine (the original gateway's names)"])


@gateway_router.post("/calculate_all_image_features", dependencies=[Depends(can_write)], responses=ADD_ERRORS)
def add_to_every_engine(request: Request, image: routes.ImageFile, form: Annotated[AddForm, Form()]) -> Added:
    """Add an image to every engine in one transaction (POST /images)."""
    return routes.add(request, None, image, form)


@gateway_router.post("/delete_all_image_features", dependencies=[Depends(can_write)], responses=DELETE_ERRORS)
def delete_from_every_engine(request: Request, body: DeleteRequest) -> Deleted:
    return routes.delete(request, None, body.image_id, body.file_name)


@gateway_router.post("/reverse_search", response_model_exclude_none=True, responses=IMAGE_SEARCH_ERRORS)
def reverse_search_everywhere(request: Request, image: routes.ImageFile) -> dict[str, list[HitOut] | FusedSearchOut]:
    """Each engine's best (up to 200), under the original services' names, and `fused`: one list of them
    by calibrated evidence, with verdicts (as POST /search)."""
    found = reverse_search(
        routes.library_of(request), routes.read_upload(request, image), PER_ENGINE, every_engine=True
    )
    lists = {SERVICE_NAMES.get(name, name): routes.hits_out(hits) for name, hits in found.found.items()}
    return lists | {"fused": routes.fused_out(found)}
