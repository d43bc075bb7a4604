"""One domain error type that carries its HTTP status; the API maps it to a response in one place."""


class LookalikeError(Exception):
    status = 400

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadImage(LookalikeError):
    """The bytes are not a decodable image (zero bytes, truncated, unknown format)."""

    status = 400


class ImageTooLarge(LookalikeError):
    """Upload or pixel count over the configured limit (decompression bombs included)."""

    status = 413


class NotFound(LookalikeError):
    status = 404


class Conflict(LookalikeError):
    status = 409


class InvalidRequest(LookalikeError):
    status = 422


class StoreVersionError(LookalikeError):
    """The data directory was written by a newer lookalike."""

    status = 500


class ModelUnavailable(LookalikeError):
    """Model weights are missing and could not be fetched (offline, HTTP error, bad checksum): 503, since the
    service itself is fine and the fix is on the operator's side."""

    status = 503


class IndexUnavailable(LookalikeError):
    """The server holding the indexes (Milvus) cannot be reached or refused a call: the library is fine,
    the fix is on the operator's side."""

    status = 503


class Busy(LookalikeError):
    """The server cannot take this now (too many large images decoding at once): try again later."""

    status = 503

    def __init__(self, message: str, retry_after: int = 5):
        super().__init__(message)
        self.retry_after = retry_after


class StorageFull(LookalikeError):
    """The data directory's disk is full: nothing was written; free space and retry."""

    status = 507
