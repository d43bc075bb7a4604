"""Bytes to RGB pixels, in one place: every engine sees images decoded the same way.

An engine asks for an image whose shorter side is at least its `decode_side`; `decode_views` gives every
side asked for from one upload, each exactly what that side alone would give, so an engine's feature never
depends on which other engines share the request. Decoding holds pixels from a `DecodeBudget` shared by
the requests of one process, which bounds the memory that huge images take at once.
"""

import ctypes
import io
import sys
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager

import numpy as np
from PIL import Image, UnidentifiedImageError
from pillow_heif import register_heif_opener

from .errors import BadImage, Busy, ImageTooLarge

register_heif_opener()  # HEIC; AVIF, WebP, TIFF, GIF and the rest are built into Pillow
# decode() checks the pixel count itself, against a limit the user sets, right after reading the header.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 200_000_000
# The formats of photos: nothing else is opened (EPS, say, would run Ghostscript on an upload).
FORMATS = ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF"]
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: the multi-picture JPEG many cameras write, opened as JPEG
_REDUCIBLE_MODES = ("L", "LA", "RGB", "RGBA")  # the modes Image.reduce() takes that to_rgb() keeps apart
_EXIF_ORIENTATION = 0x0112
# What ImageOps.exif_transpose does per orientation; applied here to reduced copies, which carry no EXIF.
_TRANSPOSE_FOR_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def return_large_blocks_to_the_os() -> None:
    """Make glibc give each allocation of half Pillow's block size (8 MiB) or more its own mapping,
    unmapped when freed. For a process that decodes huge uploads on many threads: the service.

    By default glibc raises that threshold after the first large free, so the 16 MiB blocks Pillow
    decodes into land in per-thread heaps that are seldom trimmed: eight 196-megapixel uploads, one after
    another under the decode budget, left 5 GB resident (bench/upload_memory.py). Mapped blocks cost a
    page fault per page on every decode (about 6% of extraction time on 12 MP JPEGs), which is why
    `lookalike index`, whose workers decode one file at a time, does not do this.
    """
    if sys.platform.startswith("linux"):
        m_mmap_threshold = -3
        try:
            ctypes.CDLL("libc.so.6").mallopt(m_mmap_threshold, Image.core.get_block_size() // 2)
        except (OSError, AttributeError):  # not glibc (musl, say): its own policy stands
            pass


class DecodeBudget:
    """Pixels being decoded at once, across threads. A decode waits until the pixels it needs are free,
    and gives up with `Busy` (503, Retry-After) after `wait_seconds`. An image larger than the whole
    budget decodes alone."""

    def __init__(self, pixels: int, wait_seconds: float = 30.0):
        self.pixels = pixels
        self.wait_seconds = wait_seconds
        self._in_use = 0
        self._free = threading.Condition()

    @contextmanager
    def reserve(self, pixels: int) -> Iterator[None]:
        deadline = time.monotonic() + self.wait_seconds
        with self._free:
            while self._in_use and self._in_use + pixels > self.pixels:
                left = deadline - time.monotonic()
                if left <= 0 or not self._free.wait(left):
                    raise Busy(
                        f"the server is decoding other large images ({self._in_use} pixels at once, budget "
                        f"{self.pixels}); try again shortly",
                        retry_after=max(1, round(self.wait_seconds / 4)),
                    )
            self._in_use += pixels
        try:
            yield
        finally:
            with self._free:
                self._in_use -= pixels
                self._free.notify_all()


UNLIMITED = DecodeBudget(2**62)


def decode(data: bytes, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` to an RGB image with EXIF orientation applied.

    With `min_side`, the image may come back smaller than stored, but never with a side
    under `min_side` (or the original's, if smaller): JPEG decodes at 1/2..1/8 scale in the
    DCT (draft mode) and other formats are reduced by whole factors, which is much faster
    than decoding 12 MP and resizing.
    """
    return decode_views(data, [min_side], max_pixels)[min_side]


def decode_views(
    data: bytes,
    sides: Collection[int | None],
    max_pixels: int = DEFAULT_MAX_PIXELS,
    budget: DecodeBudget = UNLIMITED,
) -> dict[int | None, Image.Image]:
    """`decode(data, side)` for every side in `sides` (None: full resolution), decoding as little as that
    allows: a JPEG once per distinct DCT scale, anything else once at full size and then reduced."""
    if not data:
        raise BadImage("empty upload: zero bytes is not an image")
    try:
        with _open(data, max_pixels) as image:
            if image.format in _JPEG_FORMATS:
                return _jpeg_views(data, image, set(sides), budget)
            with budget.reserve(image.width * image.height):
                return _reduced_views(image, set(sides))
    except UnidentifiedImageError as exc:
        raise BadImage(f"not an image, or not one of {', '.join(FORMATS)}") from exc
    except RuntimeError as exc:
        if "Security limit exceeded" in str(exc):  # libheif: a declared size past its own limits
            raise ImageTooLarge(f"image is larger than its decoder allows: {exc}") from exc
        raise BadImage(f"image could not be decoded (corrupt): {exc}") from exc
    except (OSError, SyntaxError, ValueError, EOFError, TypeError) as exc:  # TypeError: a tag of the wrong type
        raise BadImage(f"image could not be decoded (truncated or corrupt): {exc}") from exc


def image_size(data: bytes) -> tuple[int, int]:
    """The width and height of the image `data` holds, upright, from its header alone."""
    with Image.open(io.BytesIO(data), formats=FORMATS) as image:
        width, height = image.size
        return (height, width) if _orientation(image) in (5, 6, 7, 8) else (width, height)


def _open(data: bytes, max_pixels: int) -> Image.Image:
    image = Image.open(io.BytesIO(data), formats=FORMATS)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
    return image


def _reduced_views(image: Image.Image, sides: set) -> dict:
    """Decode at full size once, then reduce by whole factors per side."""
    image.load()
    orientation = _orientation(image)
    reducible = image if image.mode in _REDUCIBLE_MODES else to_rgb(image)
    return {side: _upright(_reduced(reducible, side), orientation) for side in sides}


def _jpeg_views(data: bytes, header: Image.Image, sides: set, budget: DecodeBudget) -> dict:
    """One decode per DCT scale: sides that draft to the same scale share its pixels."""
    orientation = _orientation(header)
    by_scale: dict[tuple[int, int], Image.Image] = {}
    views = {}
    for side in sorted(sides, key=lambda side: side or 0):
        image = Image.open(io.BytesIO(data), formats=["JPEG"])
        if side:
            image.draft("RGB", (side, side))  # keeps both sides >= side
        if image.size not in by_scale:
            with budget.reserve(image.width * image.height):
                image.load()
                by_scale[image.size] = _upright(image, orientation)
        views[side] = by_scale[image.size]
    return views


def _reduced(image: Image.Image, min_side: int | None) -> Image.Image:
    factor = min(image.size) // min_side if min_side else 1
    return image.reduce(factor) if factor >= 2 else image


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(_EXIF_ORIENTATION, 1))
    except (TypeError, ValueError):  # a malformed EXIF block: show the pixels as stored
        return 1


def _upright(image: Image.Image, orientation: int) -> Image.Image:
    transpose = _TRANSPOSE_FOR_ORIENTATION.get(orientation)
    return to_rgb(image.transpose(transpose) if transpose is not None else image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB: alpha flattened on white, 16-bit scaled, CMYK converted."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = _wide_grey_to_l(image)
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode != "RGB":
        image = image.convert("RGB")
    return image


def _wide_grey_to_l(image: Image.Image) -> Image.Image:
    # Pillow's own I;16 -> L conversion clips at 255 instead of scaling; scale by the type's range.
    pixels = np.asarray(image)
    if pixels.dtype.kind == "f":
        pixels = np.where(np.isfinite(pixels), pixels, 0.0)  # NaN and infinities have no grey level
        scaled = np.clip(pixels, 0.0, 1.0) * 255.0 if pixels.max(initial=0) <= 1.0 else np.clip(pixels, 0, 255)
    else:
        top = 65535 if image.mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255
        scaled = pixels.astype(np.float64) * (255.0 / top)
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L")
