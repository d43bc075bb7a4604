"""Thumbnails: what the web page shows of each photo, made from the decode the engines already do.

A thumbnail is a WebP whose long side is SIDE pixels (smaller photos keep their size), stored with the
image record in the same transaction (`FeatureStore`), together with what the page tells of the
original: its upright width and height and its size in bytes.
"""

import io
import struct
from dataclasses import dataclass

from PIL import Image

from .decode import decode, image_size

SIDE = 256
THUMBNAIL = "thumbnail"  # the thumbnail's view among the engines' in `engines.decode_for`
# The view the thumbnail is made from: its shorter side at least SIDE, so a landscape's long side is too.
DECODE_SIDE = SIDE
QUALITY = 80  # WebP's quality: 256-px photos at about 9 KB, no blocking seen at this size
# WebP's effort (0-6): 2 took 7 ms where 4 took 10, for 5% more bytes, on a 500x375 view (docs/benchmarks.md).
METHOD = 2
_HEADER = struct.Struct(">IIQ")  # width, height, bytes of the original


@dataclass(frozen=True)
class Thumbnail:
    width: int  # the original's, upright
    height: int
    size: int  # the original's bytes
    webp: bytes

    def to_bytes(self) -> bytes:
        return _HEADER.pack(self.width, self.height, self.size) + self.webp

    @classmethod
    def from_bytes(cls, value: bytes) -> "Thumbnail":
        return cls(*_HEADER.unpack_from(value), bytes(value[_HEADER.size :]))


def make_thumbnail(data: bytes, view: Image.Image) -> Thumbnail:
    """The thumbnail of the image `data` holds, from `view`: its RGB decode with a shorter side of at
    least DECODE_SIDE (or the original's, where smaller)."""
    scale = min(1.0, SIDE / max(view.size))
    size = (max(1, round(view.width * scale)), max(1, round(view.height * scale)))
    # Box-reduced to within twice the size (a panorama's view may be far larger), then bicubic: as good
    # as Lanczos to the eye at this size, in two thirds of the time.
    small = view.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0) if scale < 1 else view
    out = io.BytesIO()
    small.save(out, "WEBP", quality=QUALITY, method=METHOD)
    width, height = image_size(data)
    return Thumbnail(width, height, len(data), out.getvalue())


def thumbnail_of(data: bytes, max_pixels: int) -> Thumbnail:
    """A thumbnail of `data` decoded for it alone: for an image stored before thumbnails were made."""
    return make_thumbnail(data, decode(data, DECODE_SIDE, max_pixels))
