"""Broken and extreme image files, made in memory from real photos: nothing binary is committed.

Pillow writes what it can; the rest (bad checksums, impossible sizes, sample formats Pillow does not
write) is patched or assembled here with struct and zlib, byte for byte as the format specs lay it out.
"""

import struct
import zlib
from functools import cache

import numpy as np
import pillow_heif
import pytest
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
