"""Who may use the service: an API key for writes (for everything when it listens beyond loopback), only
trusted Host names (a DNS-rebinding page names its own), and no writes from another site's pages.

A browser sends `Origin` with every cross-site POST or DELETE. Without a key, that header is what tells
a gallery's own calls (no Origin, or this service's) from a page elsewhere that posts a form here; with
a key, another site cannot know it. CORS is off unless origins are configured.
"""

import ipaddress
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit

from fastapi import FastAPI, Request, Security
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader
from starlette.types import ASGIApp, Receive, Scope, Send

from ..config import Settings
from ..errors import LookalikeError

API_KEY_HEADER = "X-API-Key"
LOOPBACK_NAMES = ["localhost", "127.0.0.1", "::1"]
api_key = APIKeyHeader(
    name=API_KEY_HEADER,
    auto_error=False,
    description="The service's key (LOOKALIKE_API_KEY): needed for writes, and for every route when the "
    "service listens beyond loopback.",
)


class Unauthorized(LookalikeError):
    status = 401


class Forbidden(LookalikeError):
    status = 403


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(settings: Settings) -> None:
    """Refuse to listen beyond loopback with no key, unless told it is meant (`insecure`)."""
    if not is_loopback(settings.host) and settings.api_key is None and not settings.insecure:
        raise LookalikeError(
            f"refusing to listen on {settings.host} without an API key: anyone who reaches it could add and "
            "delete images. Set LOOKALIKE_API_KEY (clients send it as the X-API-Key header), or pass "
            "--insecure if something in front of the service (a proxy with its own login) guards it"
        )


def trusted_hosts(settings: Settings) -> list[str]:
    """The Host names served: as configured; else loopback names and the bound address, or any name when
    the service listens on every address (its key then guards it)."""
    if settings.trusted_hosts is not None:
        return settings.trusted_hosts
    if settings.host in ("0.0.0.0", "::"):
        return ["*"]
    return sorted({*LOOPBACK_NAMES, settings.host})


class TrustedHosts:
    """Answers 400 to a request whose Host header names a host not served (DNS rebinding)."""

    def __init__(self, app: ASGIApp, hosts: list[str]):
        self.app = app
        self.hosts = {host.lower() for host in hosts}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.hosts:
            host = _host_name(dict(scope["headers"]).get(b"host", b"").decode("latin-1"))
            if host not in self.hosts:
                refusal = JSONResponse({"detail": "this service does not serve that host name"}, 400)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def document_access(app: FastAPI, settings: Settings) -> None:
    """Make the schema say which operations need the key under these settings: writes when a key is set,
    every operation when the service also listens beyond loopback; none without a key."""
    build_schema = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            schema = build_schema()
            writes = {
                (route.path, method.lower())
                for route in every_route(app.router.routes)
                if isinstance(route, APIRoute) and any(d.dependency is can_write for d in route.dependencies)
                for method in route.methods
            }
            for path, operations in schema["paths"].items():
                for method, operation in operations.items():
                    operation.pop("security", None)
                    if settings.api_key is not None and ((path, method) in writes or not is_loopback(settings.host)):
                        operation["security"] = [{api_key.scheme_name: []}]
        return app.openapi_schema

    app.openapi = openapi


def every_route(routes: list) -> Iterator:
    for route in routes:
        included = getattr(route, "original_router", None)  # FastAPI keeps an included router whole
        yield from every_route(included.routes) if included is not None else [route]


def can_read(request: Request, key: str | None = Security(api_key)) -> None:
    settings: Settings = request.app.state.settings
    if settings.api_key is not None and not is_loopback(settings.host):
        _check_key(settings, key)


def can_write(request: Request, key: str | None = Security(api_key)) -> None:
    settings: Settings = request.app.state.settings
    origin = request.headers.get("origin")
    if origin is not None and not _same_origin(origin, request) and origin not in settings.cors_origins:
        raise Forbidden(f"writes from pages of {origin} are not allowed (see LOOKALIKE_CORS_ORIGINS)")
    if settings.api_key is not None:
        _check_key(settings, key)


def _check_key(settings: Settings, key: str | None) -> None:
    if key is None:
        raise Unauthorized(f"this service needs its API key in the {API_KEY_HEADER} header")
    if not secrets.compare_digest(key.encode(), settings.api_key.get_secret_value().encode()):
        raise Unauthorized("wrong API key")


def _same_origin(origin: str, request: Request) -> bool:
    parts = urlsplit(origin)
    return parts.netloc.lower() == request.headers.get("host", "").lower() and parts.scheme in ("http", "https")


def _host_name(host_header: str) -> str:
    return (urlsplit(f"//{host_header}").hostname or "").lower()
