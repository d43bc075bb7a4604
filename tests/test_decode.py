"""Decoding in one place: every input kind a gallery sends becomes upright 8-bit RGB, or a clear 4xx."""

import io

import numpy as np
import pytest
from photos import encode
from PIL import Image

from lookalike.decode import decode
from lookalike.errors import BadImage, ImageTooLarge


def saved(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "HEIF", "AVIF"])
def test_every_format_decodes_to_rgb_close_to_the_original(photos, fmt):
    original = photos["coffee"]
    decoded = decode(saved(original, fmt))
    assert decoded.mode == "RGB" and decoded.size == original.size
    error = np.abs(np.asarray(decoded, np.int16) - np.asarray(original, np.int16)).mean()
    assert error < (25 if fmt == "GIF" else 8), fmt  # GIF: a 256-colour palette


def test_exif_orientation_is_applied(photos):
    original = photos["rocket"]
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: viewers turn it 90 degrees clockwise
    data = saved(original.transpose(Image.Transpose.ROTATE_90), "JPEG", exif=exif, quality=95)
    decoded = decode(data)
    assert decoded.size == original.size
    assert np.abs(np.asarray(decoded, np.int16) - np.asarray(original, np.int16)).mean() < 6


def test_alpha_is_flattened_on_white():
    rgba = Image.new("RGBA", (64, 64), (255, 0, 0, 0))
    rgba.paste((0, 0, 255, 255), (0, 0, 32, 64))
    pixels = np.asarray(decode(saved(rgba, "PNG")))
    assert tuple(pixels[10, 10]) == (0, 0, 255) and tuple(pixels[10, 50]) == (255, 255, 255)


def test_palette_with_transparency_and_greyscale_and_cmyk(photos):
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    assert tuple(np.asarray(decode(saved(palette, "PNG", transparency=1)))[0, 0]) == (255, 255, 255)
    assert tuple(np.asarray(decode(saved(palette, "PNG")))[0, 0]) == (200, 10, 10)
    grey = decode(saved(photos["astronaut"].convert("L"), "PNG"))
    assert grey.mode == "RGB"
    cmyk = decode(saved(photos["coffee"].convert("CMYK"), "JPEG", quality=95))
    assert np.abs(np.asarray(cmyk, np.int16) - np.asarray(photos["coffee"], np.int16)).mean() < 12


def test_16_bit_grey_is_scaled_not_clipped():
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (16, 1))
    pixels = np.asarray(decode(saved(Image.fromarray(ramp), "PNG")))[..., 0]
    assert pixels[0, 0] == 0 and pixels[0, -1] == 255 and pixels[0, 128] == pytest.approx(128, abs=2)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_small_decode_never_goes_under_the_asked_side(photos, fmt):
    photo = photos["pexels-1317558"]  # 1920x2880
    decoded = decode(saved(photo, fmt), min_side=288)
    assert 288 <= min(decoded.size) < min(photo.size)
    assert decoded.width / decoded.height == pytest.approx(photo.width / photo.height, rel=0.02)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "zero bytes"),
        (b"just some text, not an image", "not an image"),
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "not an image|truncated|corrupt"),
    ],
)
def test_not_an_image_is_a_bad_image(data, message):
    with pytest.raises(BadImage, match=message):
        decode(data)


def test_truncated_jpeg_is_a_bad_image(photos):
    data = encode(photos["chelsea"])
    with pytest.raises(BadImage, match="truncated|corrupt"):
        decode(data[: len(data) // 2])


def test_too_many_pixels_is_refused_before_decoding():
    bomb = saved(Image.new("L", (20_000, 20_000)), "PNG")  # 400 MP in a few hundred KB
    assert len(bomb) < 2_000_000
    with pytest.raises(ImageTooLarge, match="20000x20000"):
        decode(bomb, max_pixels=100_000_000)
