"""An image's record and the store's keys: ids as 8-byte big-endian keys (LMDB sorts them as numbers),
file names as keys within LMDB's limit."""

import hashlib
import struct
from dataclasses import dataclass

from ..errors import InvalidRequest

MAX_IMAGE_ID = 2**63 - 1  # FAISS ids are signed 64-bit
MAX_FILE_NAME_BYTES = 4096  # a path's limit on Linux; longer names are keyed by digest all the same
_RECORD = struct.Struct(">Qq")  # file size, mtime_ns
_MAX_NAME_KEY = 480  # LMDB's keys end at 511 bytes


def id_key(image_id: int) -> bytes:
    return image_id.to_bytes(8, "big")


def key_id(key: bytes) -> int:
    return int.from_bytes(key, "big")


def name_key(file_name: str) -> bytes:
    """A file name's key in `names`: the name itself, or past LMDB's key limit (511 bytes) a digest of
    it, marked by a first byte no UTF-8 text starts with."""
    encoded = file_name.encode()
    return encoded if len(encoded) <= _MAX_NAME_KEY else b"\xff" + hashlib.sha256(encoded).digest()


@dataclass(frozen=True)
class ImageRecord:
    image_id: int
    file_name: str
    size: int = 0
    mtime_ns: int = 0
    digest: bytes = b""  # SHA-256 of the bytes it was made from: the same bytes are the same image
    thumbnail: bytes = b""  # a `thumbnails.Thumbnail`, as bytes, written with it (read: `FeatureStore.thumbnail`)

    @property
    def from_folder(self) -> bool:
        """Made by `lookalike index`, which records its file's size and mtime. An image added through the
        API has neither (size 0: no image is zero bytes), and `index` leaves it alone."""
        return self.size > 0

    def to_bytes(self) -> bytes:
        """As `images` holds it (the digest and the thumbnail are kept apart)."""
        return _RECORD.pack(self.size, self.mtime_ns) + self.file_name.encode()

    @classmethod
    def from_bytes(cls, image_id: int, value: bytes) -> "ImageRecord":
        size, mtime_ns = _RECORD.unpack_from(value)
        return cls(image_id, bytes(value[_RECORD.size :]).decode(), size, mtime_ns)


def check_image_id(image_id: int) -> None:
    if not 0 <= image_id <= MAX_IMAGE_ID:
        raise InvalidRequest(f"image_id must be between 0 and {MAX_IMAGE_ID}, got {image_id}")


def check_file_name(file_name: str) -> None:
    try:
        size = len(file_name.encode())
    except UnicodeEncodeError:
        raise InvalidRequest("file_name must be valid Unicode text (it holds a lone surrogate)") from None
    if size > MAX_FILE_NAME_BYTES:
        raise InvalidRequest(f"file_name is {size} bytes in UTF-8; the limit is {MAX_FILE_NAME_BYTES}")
