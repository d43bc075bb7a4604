"""The upload limit, enforced while the body arrives: a body over it is refused from its Content-Length
before a byte is read, or as soon as it passes the limit, never spooled whole to disk first."""

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Room for the multipart boundaries and the form's other fields beside the image itself.
FORM_OVERHEAD_BYTES = 64 * 1024


class UploadLimit:
    def __init__(self, app: ASGIApp, max_upload_bytes: int):
        self.app = app
        self.limit = max_upload_bytes + FORM_OVERHEAD_BYTES
        self.message = f"upload is larger than the limit of {max_upload_bytes} bytes"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            await JSONResponse({"detail": self.message}, 413, headers={"Connection": "close"})(scope, receive, send)
            return
        received = 0

        async def receive_within_limit() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                # FastAPI lets an HTTPException raised while it reads the body through as the response.
                raise HTTPException(413, self.message, headers={"Connection": "close"})
            return message

        await self.app(scope, receive_within_limit, send)
