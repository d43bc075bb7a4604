"""Broken and extreme image files, made in memory from real photos: nothing binary is committed.

Pillow writes what it can; the rest (bad checksums, impossible sizes, sample formats Pillow does not
write) is patched or assembled here with struct and zlib, byte for byte as the format specs lay it out.
"""

import struct
import zlib
from functools import cache

import numpy as np
from photos import encode
from photos import photos as load_photos
from PIL import Image, TiffImagePlugin

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ORIENTATION = 0x0112
IMAGE_DESCRIPTION = 0x010E
EXIF_IFD, DIGITAL_ZOOM_RATIO = 0x8769, 0xA404
ASCII, SHORT, LONG = 2, 3, 4  # TIFF field types, as EXIF uses them too


@cache
def photo(name: str = "chelsea", side: int = 400) -> Image.Image:
    """A real photo, small: the corpus is about the container, and small files keep the run fast."""
    image = load_photos()[name].copy()
    image.thumbnail((side, side))
    return image


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# -- PNG ---------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_chunks(data: bytes) -> list[tuple[int, bytes, int]]:
    """(offset, type, data length) of each chunk."""
    found, at = [], len(PNG_SIGNATURE)
    while at + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[at : at + 8])
        found.append((at, kind, length))
        at += 12 + length
    return found


def png_raw(width: int, height: int, rows: bytes, depth: int = 8, colour: int = 2, idat: bytes | None = None) -> bytes:
    """A PNG from its parts; `rows` are the filtered scanlines, `idat` replaces their compressed stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    idat = zlib.compress(rows) if idat is None else idat
    return PNG_SIGNATURE + png_chunk(b"IHDR", ihdr) + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b"")


def scanlines(pixels: np.ndarray) -> bytes:
    """Rows with filter type 0 in front; 16-bit samples go big-endian, as PNG stores them."""
    pixels = pixels.astype(">u2") if pixels.dtype == np.uint16 else pixels
    return b"".join(b"\0" + row.tobytes() for row in pixels)


def png_wide(name: str, alpha: bool = False) -> bytes:
    """16 bits per channel (48-bit RGB, or 64-bit RGBA): Pillow reads these but cannot write them."""
    pixels = np.asarray(photo(name), np.uint16) * 257
    if alpha:
        ramp = np.linspace(65535, 0, pixels.shape[1]).astype(np.uint16)
        pixels = np.dstack([pixels, np.broadcast_to(ramp, pixels.shape[:2])])
    height, width = pixels.shape[:2]
    return png_raw(width, height, scanlines(pixels), depth=16, colour=6 if alpha else 2)


def png_declared(width: int, height: int) -> bytes:
    """A few bytes that declare any size: one row of zeros is all the pixel data there is."""
    row = b"\0" * (1 + min(width, 1000))
    return png_raw(width, height, row, depth=8, colour=0)


def rewrite_chunk(data: bytes, kind: bytes, change) -> bytes:
    """`change` the first `kind` chunk's data in place, and give it the CRC of what it now holds."""
    at, _, length = next(chunk for chunk in png_chunks(data) if chunk[1] == kind)
    body = bytearray(data[at + 8 : at + 8 + length])
    change(body)
    return data[:at] + png_chunk(kind, bytes(body)) + data[at + 12 + length :]


def bad_crc(data: bytes, kind: bytes) -> bytes:
    at, _, length = next(chunk for chunk in png_chunks(data) if chunk[1] == kind)
    crc_at = at + 8 + length
    return data[:crc_at] + bytes([data[crc_at] ^ 0xFF]) + data[crc_at + 1 :]


def with_chunk_before_idat(data: bytes, chunk: bytes) -> bytes:
    at = next(offset for offset, kind, _ in png_chunks(data) if kind == b"IDAT")
    return data[:at] + chunk + data[at:]


def png_idat_cut(name: str) -> bytes:
    """The file ends inside the IDAT chunk, as an interrupted download does."""
    data = encode(photo(name), "PNG")
    at, _, length = next(chunk for chunk in png_chunks(data) if chunk[1] == b"IDAT")
    return data[: at + 8 + length // 2]


def png_idat_short(name: str) -> bytes:
    """Every chunk well formed, checksums right, but the IDAT holds only half the compressed image."""
    pixels = np.asarray(photo(name))
    stream = zlib.compress(scanlines(pixels))
    return png_raw(pixels.shape[1], pixels.shape[0], b"", idat=stream[: len(stream) // 2])


def png_text_bomb(name: str) -> bytes:
    """A real image with a zTXt chunk that inflates to 200 MB: metadata as a decompression bomb."""
    bomb = zlib.compress(b"\0" * 200_000_000, 9)
    return with_chunk_before_idat(encode(photo(name), "PNG"), png_chunk(b"zTXt", b"Comment\0\0" + bomb))


def png_alpha(name: str) -> bytes:
    """Alpha that fades across the photo: the hidden colour under transparent pixels must not matter."""
    rgba = photo(name).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size).rotate(90))
    return encode(rgba, "PNG")


def png_palette_transparent(name: str) -> bytes:
    paletted = photo(name).convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    paletted.paste(255, (0, 0, paletted.width // 3, paletted.height // 3))  # index 255: the transparent one
    return encode(paletted, "PNG", transparency=255)


def grey16(name: str) -> Image.Image:
    return Image.fromarray(np.asarray(photo(name).convert("L")).astype(np.uint16) * 257)


# -- JPEG --------------------------------------------------------------------------------------------


def jpeg_segments(data: bytes) -> dict[int, int]:
    """Marker -> offset of its first occurrence, from SOI up to the first SOS (scan data follows it)."""
    found, at = {}, 2
    while at < len(data):
        assert data[at] == 0xFF, at
        marker = data[at + 1]
        found.setdefault(marker, at)
        if marker == 0xDA:
            return found
        at += 2 + struct.unpack(">H", data[at + 2 : at + 4])[0]
    return found


def jpeg_scan_start(data: bytes) -> int:
    sos = jpeg_segments(data)[0xDA]
    return sos + 2 + struct.unpack(">H", data[sos + 2 : sos + 4])[0]


def jpeg_cut(name: str, where: str, progressive: bool = False) -> bytes:
    """A JPEG cut at a point of its structure, or a fraction of the way through its entropy-coded scan."""
    data = encode(photo(name), "JPEG", quality=90, progressive=progressive)
    if where == "soi":
        return data[:2]
    if where == "headers":  # every table and the frame header, not one byte of the scan
        return data[: jpeg_segments(data)[0xDA]]
    if where == "no-eoi":
        assert data.endswith(b"\xff\xd9")
        return data[:-2]
    scan = jpeg_scan_start(data)
    return data[: scan + int((len(data) - 2 - scan) * float(where))]


def jpeg_progressive_first_scan(name: str) -> bytes:
    """A progressive JPEG cut after its first (DC) scan: a decoder could draw a blurry preview from it."""
    data = encode(photo(name), "JPEG", quality=90, progressive=True)
    first = jpeg_scan_start(data)
    second_sos = data.index(b"\xff\xda", first)
    return data[:second_sos]


def jpeg_declared(width: int, height: int) -> bytes:
    """A real JPEG whose frame header claims another size."""
    data = bytearray(encode(photo("coffee", 64), "JPEG", quality=90))
    sof = jpeg_segments(bytes(data))[0xC0]
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def jpeg_with_app1(name: str, payload: bytes) -> bytes:
    """A JPEG with an APP1 segment right after SOI, whatever it holds."""
    data = encode(photo(name), "JPEG", quality=90)
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def exif_with(tags: dict) -> bytes:
    exif = Image.Exif()
    for tag, value in tags.items():
        exif[tag] = value
    return exif.tobytes()


def tiff_ifd(entries: list[tuple[int, int, int, bytes]]) -> bytes:
    """A little-endian TIFF header and one IFD of raw entries (tag, type, count, 4 value bytes): EXIF as
    any writer could get it wrong."""
    body = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        body += struct.pack("<HHI", tag, kind, count) + value.ljust(4, b"\0")
    return b"II*\0" + struct.pack("<I", 8) + body + struct.pack("<I", 0)


def exif_orientation_as(kind: int, count: int, value: bytes) -> bytes:
    return b"Exif\0\0" + tiff_ifd([(ORIENTATION, kind, count, value)])


def camera_rotated(name: str) -> bytes:
    """Stored turned, tagged orientation 6, with the 0/0 DigitalZoomRatio many cameras write ("no zoom"):
    a rational with no value must not stop the turn back upright."""
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    exif.get_ifd(EXIF_IFD)[DIGITAL_ZOOM_RATIO] = TiffImagePlugin.IFDRational(0, 0)
    return encode(photo(name).transpose(Image.Transpose.ROTATE_90), "JPEG", quality=90, exif=exif.tobytes())
