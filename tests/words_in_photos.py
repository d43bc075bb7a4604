"""Words rendered into real photos, as a sign, a stamp or a caption would sit in one: TrueType fonts
from Debian's fonts-dejavu-core and fonts-liberation2 (fetched by scripts/fetch-photos), a given
height in pixels, dark on light or light on dark, turned by a given angle, over the photo itself.

Shared by tests/test_text_engine.py and bench/ocr_recall.py.
"""

import random
from dataclasses import dataclass
from pathlib import Path

from photos import photos_dir
from PIL import Image, ImageDraw, ImageFont

LONG_SIDE = 1024  # the photos are scaled to this first: a word's height is in these pixels
# A word for each photo the engine contract tests use, so the text engine has something to read there.
WORDS = {
    "astronaut": "Harbour", "coffee": "Espresso", "chelsea": "Bicycle", "rocket": "Meadow", "motorcycle_left": "Garage",
    "pexels-1317558": "Lantern", "pexels-2560067": "Kitchen",
}  # fmt: skip


def fonts() -> list[Path]:
    found = sorted((photos_dir() / "fonts").glob("*.ttf"))
    assert len(found) >= 6, f"fonts missing under {photos_dir() / 'fonts'}: run `make photos`"
    return found


@dataclass(frozen=True)
class Lettering:
    text: str
    height: int  # pixels from the top of the tallest letter to the bottom of the lowest
    angle: float = 0.0  # degrees, anticlockwise
    font: Path | None = None  # None: the first font
    dark_on_light: bool = True
    plate: bool = True  # a plate behind the letters, as on a sign; False: letters straight on the photo


def with_its_word(photo: Image.Image, name: str) -> Image.Image:
    """The photo `name` with its word of WORDS on a plate, 48 px tall, the same every time."""
    word = WORDS[name]
    return render(photo, Lettering(word, 48, font=fonts()[len(word) % len(fonts())]), random.Random(name))


def render(photo: Image.Image, lettering: Lettering, rng: random.Random) -> Image.Image:
    """The photo scaled to LONG_SIDE with the lettering pasted at a random place where it fits whole."""
    image = photo.convert("RGB")
    image.thumbnail((LONG_SIDE, LONG_SIDE))
    tile = _tile(lettering)
    if tile.width > image.width or tile.height > image.height:
        tile.thumbnail((image.width, image.height))
    x, y = rng.randint(0, image.width - tile.width), rng.randint(0, image.height - tile.height)
    image.paste(tile, (x, y), tile)
    return image


def _tile(lettering: Lettering) -> Image.Image:
    font_path = lettering.font or fonts()[0]
    font = _font_of_height(font_path, lettering.text, lettering.height)
    left, top, right, bottom = font.getbbox(lettering.text)
    ink, paper = (
        ((20, 20, 20, 255), (245, 240, 230, 255))
        if lettering.dark_on_light
        else ((250, 250, 250, 255), (25, 30, 40, 255))
    )
    pad = max(2, lettering.height // 3)
    tile = Image.new(
        "RGBA", (right - left + 2 * pad, bottom - top + 2 * pad), paper if lettering.plate else (0, 0, 0, 0)
    )
    draw = ImageDraw.Draw(tile)
    # Without a plate, a thin outline of the paper colour keeps the letters apart from a busy photo.
    outline = {} if lettering.plate else {"stroke_width": max(1, lettering.height // 16), "stroke_fill": paper}
    draw.text((pad - left, pad - top), lettering.text, font=font, fill=ink, **outline)
    return tile.rotate(lettering.angle, expand=True, resample=Image.BICUBIC) if lettering.angle else tile


def _font_of_height(path: Path, text: str, height: int) -> ImageFont.FreeTypeFont:
    """The font at the size whose ink for `text` is `height` pixels tall (or just under)."""
    size = height
    for _ in range(4):
        font = ImageFont.truetype(str(path), size)
        _, top, _, bottom = font.getbbox(text)
        ink = max(bottom - top, 1)
        if ink == height:
            break
        size = max(1, round(size * height / ink))
    return ImageFont.truetype(str(path), size)


def on_a_phone(photo: Image.Image) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """A screenshot of the photo: full width on a dark 1080x2340 screen between a status bar and a tool
    bar; and where the photo is in it (left, top, right, bottom)."""
    screen = Image.new("RGB", (1080, 2340), (16, 16, 16))
    shown = photo.resize((1080, round(photo.height * 1080 / photo.width)), Image.Resampling.BICUBIC)
    top = (2340 - shown.height) // 2
    screen.paste(shown, (0, top))
    draw = ImageDraw.Draw(screen)
    font = ImageFont.truetype(str(next(f for f in fonts() if "DejaVuSans-Bold" in f.name)), 40)
    draw.text((40, 30), "9:41", font=font, fill="white")
    draw.text((40, 2240), "Share    Edit    Delete", font=font, fill="white")
    return screen, (0, top, 1080, top + shown.height)
