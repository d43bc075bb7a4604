"""Bytes to RGB pixels, in one place: every engine sees images decoded the same way."""

import io

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from pillow_heif import register_heif_opener

from .errors import BadImage, ImageTooLarge

register_heif_opener()  # HEIC; AVIF, WebP, TIFF, GIF and the rest are built into Pillow
# decode() checks the pixel count itself, against a limit the user sets, right after reading the header.
Image.MAX_IMAGE_PIXELS = None

DEFAULT_MAX_PIXELS = 200_000_000


def decode(data: bytes, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode `data` to an RGB image with EXIF orientation applied.

    With `min_side`, the image may come back smaller than stored, but never with a side
    under `min_side` (or the original's, if smaller): JPEG decodes at 1/2..1/8 scale in the
    DCT (draft mode) and other formats are reduced by whole factors, which is much faster
    than decoding 12 MP and resizing.
    """
    if not data:
        raise BadImage("empty upload: zero bytes is not an image")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(f"image is {width}x{height} pixels; the limit is {max_pixels} pixels")
        if min_side:
            image = _decode_small(image, min_side)
        image.load()
        return to_rgb(ImageOps.exif_transpose(image))
    except UnidentifiedImageError as exc:
        raise BadImage("not an image, or a format lookalike cannot read") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise BadImage(f"image could not be decoded (truncated or corrupt): {exc}") from exc


def _decode_small(image: Image.Image, min_side: int) -> Image.Image:
    if image.format == "JPEG":
        image.draft("RGB", (min_side, min_side))  # keeps both sides >= min_side
        return image
    factor = min(image.size) // min_side
    if factor >= 2:
        if image.mode not in ("L", "LA", "RGB", "RGBA"):  # the modes reduce() takes
            image = to_rgb(image)
        return image.reduce(factor)
    return image


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
        scaled = np.clip(pixels, 0.0, 1.0) * 255.0 if pixels.max(initial=0) <= 1.0 else np.clip(pixels, 0, 255)
    else:
        top = 65535 if image.mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255
        scaled = pixels.astype(np.float64) * (255.0 / top)
    return Image.fromarray(np.round(scaled).astype(np.uint8), "L")
