"""Broken and extreme files in the other containers (TIFF, GIF, BMP, HEIF/AVIF, SVG, EPS), made in memory
from real photos like those of broken_files.py, which holds PNG, JPEG and EXIF."""

import struct
from functools import cache

import numpy as np
import pillow_heif
import pytest
from broken_files import ASCII, LONG, SHORT, photo
from photos import encode
from PIL import Image

# -- TIFF --------------------------------------------------------------------------------------------


def tiff_raw(
    width: int,
    height: int,
    pixels: bytes,
    bits: list[int],
    photometric: int,
    sample_format: int = 1,
    pixel_bytes: int | None = None,
    strip_offset_as_text: bool = False,
) -> bytes:
    """An uncompressed, one-strip, little-endian TIFF; `pixel_bytes` declares a strip longer than given."""
    extra = b""
    header_and_ifd = 8 + 2 + 12 * 10 + 4

    def value(kind: int, values: list[int]) -> tuple[int, int, int, bytes]:
        nonlocal extra
        packed = struct.pack(f"<{len(values)}{'H' if kind == SHORT else 'I'}", *values)
        if len(packed) <= 4:
            return kind, len(values), packed
        offset = header_and_ifd + len(extra)
        extra += packed
        return kind, len(values), struct.pack("<I", offset)

    samples = len(bits)
    fields = {
        256: value(LONG, [width]),
        257: value(LONG, [height]),
        258: value(SHORT, bits),
        259: value(SHORT, [1]),  # no compression
        262: value(SHORT, [photometric]),
        277: value(SHORT, [samples]),
        278: value(LONG, [height]),
        279: value(LONG, [pixel_bytes or len(pixels)]),
        339: value(SHORT, [sample_format] * samples),
    }
    strip = header_and_ifd + len(extra)  # the pixels follow the values too long for their entries
    fields[273] = (ASCII, 4, b"%d" % strip) if strip_offset_as_text else (LONG, 1, struct.pack("<I", strip))
    ifd = struct.pack("<H", len(fields))
    for tag in sorted(fields):
        kind, count, packed = fields[tag]
        ifd += struct.pack("<HHI", tag, kind, count) + packed.ljust(4, b"\0")
    ifd += struct.pack("<I", 0)
    assert 8 + len(ifd) == header_and_ifd
    return b"II*\0" + struct.pack("<I", 8) + ifd + extra + pixels


def tiff_48_bit(name: str) -> bytes:
    pixels = np.asarray(photo(name), np.uint16) * 257
    height, width = pixels.shape[:2]
    return tiff_raw(width, height, pixels.astype("<u2").tobytes(), [16, 16, 16], photometric=2)


def tiff_half_float(name: str) -> bytes:
    """16-bit IEEE floats (SampleFormat 3), as HDR tools write them and Pillow has no mode for."""
    pixels = (np.asarray(photo(name).convert("L")) / 255).astype("<f2")
    height, width = pixels.shape
    return tiff_raw(width, height, pixels.tobytes(), [16], photometric=1, sample_format=3)


def tiff_float(name: str, special: bool = False) -> bytes:
    """Pillow's 'F' mode (32-bit float), 0..1 as HDR tools write it; with NaN, infinities and negatives."""
    pixels = np.asarray(photo(name).convert("L"), np.float32) / 255
    if special:
        pixels[:20] = np.nan
        pixels[20:40] = np.inf
        pixels[40:60] = -np.inf
        pixels[60:80] = -3.5
    return encode(Image.fromarray(pixels, "F"), "TIFF")


def tiff_strip_past_end(name: str) -> bytes:
    """The strip is declared whole but the file stops halfway through it."""
    pixels = np.asarray(photo(name)).tobytes()
    image = photo(name)
    return tiff_raw(image.width, image.height, pixels[: len(pixels) // 2], [8, 8, 8], 2, pixel_bytes=len(pixels))


def tiff_strip_offset_as_text(name: str) -> bytes:
    """StripOffsets typed ASCII: the tag is there, with a value of the wrong type."""
    image = photo(name)
    return tiff_raw(image.width, image.height, np.asarray(image).tobytes(), [8, 8, 8], 2, strip_offset_as_text=True)


def tiff_declared(width: int, height: int) -> bytes:
    """A size in the IFD and 64 bytes of pixels: no strip could ever hold what it claims."""
    return tiff_raw(width, height, b"\0" * 64, [8], photometric=1)


# -- GIF, WebP, APNG, multi-page TIFF: several frames --------------------------------------------------

FRAMES = ["astronaut", "coffee", "chelsea"]


@cache
def frames() -> list[Image.Image]:
    """Three different photos, one size: whichever frame is indexed is plain to see."""
    return [photo(name).resize((320, 240)) for name in FRAMES]


def animated(fmt: str, **options) -> bytes:
    first, *rest = frames()
    if fmt == "GIF":
        first, *rest = (frame.convert("P", palette=Image.Palette.ADAPTIVE) for frame in frames())
    return encode(first, fmt, save_all=True, append_images=rest, **options)


def gif_declared(width: int, height: int) -> bytes:
    """A real GIF whose logical screen claims another size."""
    data = bytearray(encode(photo("coffee", 64).convert("P", palette=Image.Palette.ADAPTIVE), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


# -- BMP ---------------------------------------------------------------------------------------------


def bmp_top_down(name: str) -> bytes:
    """A negative height: rows stored top first, which the BMP spec allows and most writers never use."""
    data = encode(photo(name), "BMP")
    (offset,) = struct.unpack("<I", data[10:14])
    width, height = struct.unpack("<ii", data[18:26])
    stride = (width * 3 + 3) // 4 * 4
    rows = [data[offset + i * stride : offset + (i + 1) * stride] for i in range(height)]
    return data[:22] + struct.pack("<i", -height) + data[26:offset] + b"".join(reversed(rows))


# -- not images at all -------------------------------------------------------------------------------

SVG_EXTERNAL_ENTITY = b"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE svg [<!ENTITY x SYSTEM "file:///etc/passwd">]>
<svg xmlns="http://www.w3.org/2000/svg" width="400" height="300">
  <rect width="400" height="300" fill="white"/>
  <text x="10" y="20">&x;</text>
</svg>
"""

# PostScript that prints /etc/passwd: Pillow opens EPS by itself and rasterises it with Ghostscript.
EPS_READS_PASSWD = b"""%!PS-Adobe-3.0 EPSF-3.0
%%BoundingBox: 0 0 400 300
/Courier findfont 10 scalefont setfont
72 200 moveto (/etc/passwd) (r) file 200 string readstring pop show
showpage
%%EOF
"""

TEXT = "Shopping list: eggs, flour, coffee.\nThis file is called holiday.jpg but it is text.\n" * 30


def heif(name: str, fmt: str) -> bytes:
    """HEIC through pillow-heif, AVIF through Pillow's own plugin; skipped where the encoder is missing."""
    pillow_heif.register_heif_opener()
    try:
        return encode(photo(name), fmt, quality=80)
    except (KeyError, OSError, RuntimeError) as exc:
        pytest.skip(f"this Pillow cannot write {fmt}: {exc!r}")


def box_at(data: bytes, kind: bytes) -> int:
    """Offset of the first ISO-BMFF box of `kind` (HEIC, AVIF): its size, then its type."""
    return data.index(kind) - 4


def heif_declared(fmt: str, width: int, height: int) -> bytes:
    """The 'ispe' property (the image's size) rewritten; the coded image stays as it was."""
    data = heif("coffee", fmt)
    at = box_at(data, b"ispe") + 12  # size, type, version and flags
    return data[:at] + struct.pack(">II", width, height) + data[at + 8 :]


def heif_primary_item(fmt: str, item: int) -> bytes:
    """'pitm' names the item that is the image; here one that does not exist."""
    data = heif("coffee", fmt)
    at = box_at(data, b"pitm") + 12
    return data[:at] + struct.pack(">H", item) + data[at + 2 :]


def heif_corrupt_stream(fmt: str) -> bytes:
    """The first byte of the coded image (an AV1 OBU or HEVC NAL header) inverted: the container is fine."""
    data = heif("coffee", fmt)
    at = box_at(data, b"mdat") + 8
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def truncated(data: bytes, fraction: float = 0.5) -> bytes:
    return data[: int(len(data) * fraction)]
