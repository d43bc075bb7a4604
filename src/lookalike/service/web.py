"""The web page (`lookalike/web/static`): plain HTML, CSS and JavaScript served by the service itself at
`/`, with no build step and nothing fetched from elsewhere; it calls the API by relative URLs."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent.parent / "web" / "static"
# The page may load and call only this service: no request of it leaves the host (a photo's thumbnail
# in a blob: URL is the page's own; styles set from the script are inline).
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
)


def add_web_page(app: FastAPI) -> None:
    app.mount("/web", StaticFiles(directory=STATIC), name="web")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Content-Security-Policy": CONTENT_SECURITY_POLICY})
