"""The broken-and-extreme-file corpus against the HTTP service.

Every file either is refused with a 4xx and a JSON detail, leaving the store as it was, or is added
and then found by its own bytes at distance 0. Never a 5xx. test_api.py covers the everyday formats
and the obvious bad uploads; this corpus goes after containers that are cut, lie about themselves,
carry hostile metadata or hold samples of unusual widths. broken_files.py and broken_containers.py
make every file.
"""

from pathlib import Path

import pytest
from broken_containers import (
    EPS_READS_PASSWD,
    FRAMES,
    SVG_EXTERNAL_ENTITY,
    TEXT,
    animated,
    bmp_top_down,
    gif_declared,
    heif,
    heif_corrupt_stream,
    heif_declared,
    heif_primary_item,
    tiff_48_bit,
    tiff_declared,
    tiff_float,
    tiff_half_float,
    tiff_strip_offset_as_text,
    tiff_strip_past_end,
    truncated,
)
from broken_files import (
    ASCII,
    IMAGE_DESCRIPTION,
    ORIENTATION,
    SHORT,
    bad_crc,
    camera_rotated,
    exif_orientation_as,
    exif_with,
    grey16,
    jpeg_cut,
    jpeg_declared,
    jpeg_progressive_first_scan,
    jpeg_with_app1,
    photo,
    png_alpha,
    png_declared,
    png_idat_cut,
    png_idat_short,
    png_palette_transparent,
    png_text_bomb,
    png_wide,
    rewrite_chunk,
    rng,
)
from fastapi.testclient import TestClient
from helpers import LOCAL_URL, error, ok, upload
from photos import encode
from PIL import Image

from lookalike.service import create_app

ADDED = "added"
# Seeded before each case so that "found first, at distance 0" means something; no case shows them.
SEEDS = {"rocket": 1, "pexels-36030587": 2}
CASE_ID = 100
NEAR = 32  # phash bits of 576: a re-encoded copy is within this, a different photo 250+ away
PASSWD = Path("/etc/passwd").read_text().splitlines()[0] if Path("/etc/passwd").exists() else "root:x:0:0"


def case(name: str, maker, expected, like: str | None = None):
    """`expected`: ADDED or the status of the refusal. `like`: the photo an added file shows, upright."""
    return pytest.param(maker, expected, like, id=name)


def exif_jpeg(tags: dict) -> bytes:
    return encode(photo("chelsea"), "JPEG", quality=90, exif=exif_with(tags))


def exif_jpeg_raw(app1: bytes) -> bytes:
    """EXIF no writer would produce: the APP1 segment as given."""
    return jpeg_with_app1("chelsea", app1)


CASES = [
    # -- not images, whatever they are called (every upload is sent as upload.jpg)
    case("zero-bytes", lambda: b"", 400),
    case("random-bytes", lambda: rng().bytes(50_000), 400),
    case("text-named-jpg", lambda: TEXT.encode(), 400),
    case("text-behind-a-jpeg-signature", lambda: b"\xff\xd8\xff\xe0" + TEXT.encode(), 400),
    case("svg-external-entity", lambda: SVG_EXTERNAL_ENTITY, 400),
    # Pillow opens EPS and hands it to Ghostscript to draw: refused here only because none is installed,
    # so on a machine with Ghostscript this case fails, and should (decode must not run PostScript).
    case("eps-reading-etc-passwd", lambda: EPS_READS_PASSWD, 400),
    # -- JPEG cut at each stage of its structure: no decoder can draw what never arrived
    case("jpeg-soi-only", lambda: jpeg_cut("chelsea", "soi"), 400),
    case("jpeg-headers-only", lambda: jpeg_cut("chelsea", "headers"), 400),
    case("jpeg-cut-at-scan-start", lambda: jpeg_cut("chelsea", "0"), 400),
    case("jpeg-cut-10%-into-scan", lambda: jpeg_cut("chelsea", "0.1"), 400),
    case("jpeg-cut-90%-into-scan", lambda: jpeg_cut("chelsea", "0.9"), 400),
    # Every pixel is there, but Pillow calls a missing end marker truncated: a refusal is allowed.
    case("jpeg-missing-only-eoi", lambda: jpeg_cut("chelsea", "no-eoi"), 400),
    case("jpeg-progressive-cut-mid-scan", lambda: jpeg_cut("chelsea", "0.5", progressive=True), 400),
    case("jpeg-progressive-first-scan-only", lambda: jpeg_progressive_first_scan("chelsea"), 400),
    case(
        "jpeg-trailing-garbage",
        lambda: encode(photo("chelsea"), "JPEG", quality=90) + rng().bytes(10_000),
        ADDED,
        like="chelsea",
    ),
    # -- PNG: checksums, cut streams, impossible headers
    case("png-bad-ihdr-crc", lambda: bad_crc(encode(photo("coffee"), "PNG"), b"IHDR"), 400),
    # Pillow does not check IDAT checksums; the pixels are intact, so adding them is right too.
    case("png-bad-idat-crc", lambda: bad_crc(encode(photo("coffee"), "PNG"), b"IDAT"), ADDED, like="coffee"),
    case("png-corrupt-deflate", lambda: rewrite_chunk(encode(photo("coffee"), "PNG"), b"IDAT", scramble), 400),
    case("png-idat-cut", lambda: png_idat_cut("coffee"), 400),
    case("png-idat-stream-short", lambda: png_idat_short("coffee"), 400),
    case("png-zero-width", lambda: png_declared(0, 100), 400),
    case("png-zero-height", lambda: png_declared(100, 0), 400),
    case("png-ztxt-bomb", lambda: png_text_bomb("coffee"), 400),
    # -- decompression bombs: a size header is all it takes, and the size alone must refuse them
    case("png-100000x100000-bomb", lambda: png_declared(100_000, 100_000), 413),
    case("jpeg-65500x65500-bomb", lambda: jpeg_declared(65_500, 65_500), 413),
    case("gif-65535x65535-bomb", lambda: gif_declared(65_535, 65_535), 413),
    case("tiff-100000x100000-bomb", lambda: tiff_declared(100_000, 100_000), 413),
    case("heic-100000x100000-bomb", lambda: heif_declared("HEIF", 100_000, 100_000), 413),
    # libavif refuses the header itself, so the pixel check never sees it: not a 413, but a 4xx.
    case("avif-100000x100000-bomb", lambda: heif_declared("AVIF", 100_000, 100_000), 400),
    # -- extreme shapes
    case("png-1x5000", lambda: encode(photo("astronaut").resize((1, 5000)), "PNG"), ADDED),
    case("jpeg-5000x1", lambda: encode(photo("astronaut").resize((5000, 1)), "JPEG", quality=90), ADDED),
    case("png-1x1", lambda: encode(photo("astronaut").resize((1, 1)), "PNG"), ADDED),
    case("jpeg-65500x2", lambda: encode(photo("astronaut").resize((65_500, 2)), "JPEG", quality=90), ADDED),
    # -- metadata: an orientation that means nothing leaves the pixels as stored
    case("exif-60-kb", lambda: exif_jpeg({IMAGE_DESCRIPTION: "x" * 60_000}), ADDED, like="chelsea"),
    case("exif-orientation-0", lambda: exif_jpeg({ORIENTATION: 0}), ADDED, like="chelsea"),
    case("exif-orientation-9", lambda: exif_jpeg({ORIENTATION: 9}), ADDED, like="chelsea"),
    case("exif-orientation-65535", lambda: exif_jpeg({ORIENTATION: 65535}), ADDED, like="chelsea"),
    case("exif-orientation-as-text", lambda: exif_jpeg_raw(exif_orientation_as(ASCII, 4, b"six\0")), ADDED),
    # Two values where one belongs: turned by the first or left alone, either is a correct add.
    case("exif-orientation-two-values", lambda: exif_jpeg_raw(exif_orientation_as(SHORT, 2, b"\6\0\6\0")), ADDED),
    case("exif-orientation-6-and-a-0/0-rational", lambda: camera_rotated("chelsea"), ADDED, like="chelsea"),
    case("exif-not-tiff", lambda: exif_jpeg_raw(b"Exif\0\0" + rng().bytes(2000)), ADDED, like="chelsea"),
    case("exif-ifd-past-end", lambda: exif_jpeg_raw(b"Exif\0\0II*\0\xf0\xff\xff\x7f"), ADDED, like="chelsea"),
    # -- several frames, each a different photo: the first is the image
    case("gif-animated", lambda: animated("GIF", duration=100, loop=0), ADDED, like=FRAMES[0]),
    case("webp-animated", lambda: animated("WEBP", duration=100, quality=80), ADDED, like=FRAMES[0]),
    case("apng", lambda: animated("PNG", duration=100), ADDED, like=FRAMES[0]),
    case("tiff-multipage", lambda: animated("TIFF"), ADDED, like=FRAMES[0]),
    # -- sample widths and colour models
    case("png-16-bit-grey", lambda: encode(grey16("coffee"), "PNG"), ADDED, like="coffee"),
    case("png-48-bit-rgb", lambda: png_wide("coffee"), ADDED, like="coffee"),
    case("png-64-bit-rgba", lambda: png_wide("coffee", alpha=True), ADDED),
    case("tiff-48-bit-rgb", lambda: tiff_48_bit("coffee"), ADDED, like="coffee"),
    case("tiff-16-bit-grey", lambda: encode(grey16("coffee"), "TIFF"), ADDED, like="coffee"),
    case("tiff-32-bit-float", lambda: tiff_float("coffee"), ADDED, like="coffee"),
    case("tiff-float-nan-inf-negative", lambda: tiff_float("coffee", special=True), ADDED),
    case("tiff-16-bit-float", lambda: tiff_half_float("coffee"), 400),
    case("tiff-strip-past-end", lambda: tiff_strip_past_end("coffee"), 400),
    case("tiff-strip-offset-as-text", lambda: tiff_strip_offset_as_text("coffee"), 400),
    case("cmyk-jpeg", lambda: encode(photo("chelsea").convert("CMYK"), "JPEG", quality=90), ADDED, like="chelsea"),
    case("cmyk-tiff", lambda: encode(photo("chelsea").convert("CMYK"), "TIFF"), ADDED, like="chelsea"),
    case("png-alpha-fade", lambda: png_alpha("astronaut"), ADDED),
    case("png-fully-transparent", lambda: encode(Image.new("RGBA", (300, 200), (255, 0, 0, 0)), "PNG"), ADDED),
    case("png-palette-transparency", lambda: png_palette_transparent("astronaut"), ADDED),
    # -- HEIC and AVIF: whole, cut, and containers that lie
    case("heic", lambda: heif("coffee", "HEIF"), ADDED, like="coffee"),
    case("avif", lambda: heif("coffee", "AVIF"), ADDED, like="coffee"),
    case("heic-truncated", lambda: truncated(heif("coffee", "HEIF")), 400),
    case("avif-truncated", lambda: truncated(heif("coffee", "AVIF")), 400),
    case("heic-primary-item-missing", lambda: heif_primary_item("HEIF", 99), 400),
    case("avif-primary-item-missing", lambda: heif_primary_item("AVIF", 99), 400),
    case("heic-corrupt-stream", lambda: heif_corrupt_stream("HEIF"), 400),
    case("avif-corrupt-stream", lambda: heif_corrupt_stream("AVIF"), 400),
    # libheif refuses to decode more pixels than the container declares: a limit, as for a bomb.
    case("heic-declared-smaller-than-coded", lambda: heif_declared("HEIF", 64, 64), 413),
    # -- the rest of the family
    case("webp-lossless-alpha", lambda: encode(photo("coffee").convert("RGBA"), "WEBP", lossless=True), ADDED),
    case("webp-truncated", lambda: truncated(encode(photo("coffee"), "WEBP", quality=80)), 400),
    case("gif-truncated", lambda: truncated(encode(photo("coffee").convert("P"), "GIF")), 400),
    case("bmp-top-down", lambda: bmp_top_down("coffee"), ADDED, like="coffee"),
    case("bmp-1-bit", lambda: encode(photo("coffee").convert("1"), "BMP"), ADDED),
    # Not a photo format: refused like every format the service does not list (EPS would run Ghostscript).
    case("ico", lambda: encode(photo("coffee"), "ICO", sizes=[(32, 32), (256, 256)]), 400),
]


def scramble(body: bytearray) -> None:
    """Overwrite the middle of a deflate stream; the chunk's CRC is then made right, so only zlib can tell."""
    middle = len(body) // 2
    body[middle : middle + 64] = rng(1).bytes(64)


@pytest.fixture
def client(settings):
    # A crash comes back as the 500 a real client sees, not as an exception in the test.
    with TestClient(create_app(settings), raise_server_exceptions=False, base_url=LOCAL_URL) as client:
        for name, image_id in SEEDS.items():
            ok(upload(client, "/images", encode(photo(name), "JPEG", quality=90), image_id=image_id), 201)
        yield client


def counts(client) -> dict:
    stats = ok(client.get("/stats"))
    return {"images": stats["images"], **stats["engines"]}


@pytest.mark.parametrize("maker, expected, like", CASES)
def test_a_file_is_refused_or_added_and_found(client, maker, expected, like):
    data = maker()
    before = counts(client)
    response = upload(client, "/images", data, image_id=CASE_ID, file_name="case")
    assert PASSWD not in response.text
    if expected != ADDED:
        error(response, expected)
        assert counts(client) == before
        # A search decodes the same way, and must refuse the same way.
        found = upload(client, "/search", data, k=1)
        assert PASSWD not in found.text
        error(found, expected)
        return
    assert ok(response, 201) == {"image_id": CASE_ID}
    after = counts(client)
    assert after["images"] == before["images"] + 1
    assert all(after[name]["features"] == before[name]["features"] + 1 for name in after if name != "images")
    # Searching with the same bytes decodes exactly as the add did: every engine finds it, at 0.
    found = ok(upload(client, "/reverse_search", data))
    fused = found.pop("fused")
    for engine, hits in found.items():
        assert hits[0] == {"image_id": CASE_ID, "distance": 0.0, "file_name": "case"}, engine
    assert fused["verdict"] == "exact" and fused["hits"][0]["image_id"] == CASE_ID
    if like:
        # And it is the photo it was made from, upright: not noise, a later frame or a turned copy.
        query = encode(photo(like), "JPEG", quality=90)
        best = ok(upload(client, "/engines/phash/search", query, k=1))[0]
        assert best["image_id"] == CASE_ID and best["distance"] <= NEAR, best


def image_part(field: str = "image") -> dict:
    return {field: ("upload.jpg", encode(photo("coffee"), "JPEG", quality=90), "image/jpeg")}


def cut_multipart() -> dict:
    """The body ends inside the file part: no closing boundary, as when a client dies mid-upload."""
    data = encode(photo("coffee"), "JPEG", quality=90)
    body = (
        b'--B\r\nContent-Disposition: form-data; name="image_id"\r\n\r\n7\r\n'
        b'--B\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n' + data[: len(data) // 2]
    )
    return {"content": body, "headers": {"content-type": "multipart/form-data; boundary=B"}}


FORMS = [
    pytest.param(lambda: {"files": image_part("file"), "data": {"image_id": "7"}}, 422, id="image-sent-as-file"),
    pytest.param(lambda: {"files": image_part(), "data": {"image_id": "-1"}}, 422, id="image-id-negative"),
    pytest.param(lambda: {"files": image_part(), "data": {"image_id": str(2**63)}}, 422, id="image-id-2**63"),
    pytest.param(lambda: {"files": image_part(), "data": {"image_id": "seven"}}, 422, id="image-id-not-a-number"),
    pytest.param(lambda: {"files": image_part(), "data": {"image_id": "0x10"}}, 422, id="image-id-hex"),
    pytest.param(cut_multipart, 422, id="multipart-cut-mid-file"),
]


@pytest.mark.parametrize("request_parts, expected", FORMS)
def test_a_malformed_upload_request_is_refused(client, request_parts, expected):
    before = counts(client)
    error(client.post("/images", **request_parts()), expected)
    assert counts(client) == before
