"""The copy-detection corpus of `copy_fusion.py`: originals, their transformed copies, and distractors.

Originals: the 46 test photos and the Machine Vision Toolbox photos (common.mvtb_photos()), scaled to
at most ORIGINAL_SIDE on the long side, stored as JPEG q90. Queries: every original under every
transform in TRANSFORMS, made from that stored JPEG and encoded as JPEG q90 (q30 for jpeg-q30).

Distractors (seeded): their sources are the other real photos the packages ship (one of them, OpenCV's
butterfly, turned out to be an original too: `copy_calibration.same_source` counts its cuts as copies of
it): OpenCV's RGB samples (no drawings, logos or test patterns) and scikit-learn's two
sample photos. 60% are one source photo cut (20-70% of its area, any place, any aspect between 1:2
and 2:1), maybe mirrored, turned up to 15 degrees, colour-jittered; 40% are mosaics of two or four
such cuts from different sources. Each is scaled to a long side of 480-1024 px. STAMPED of them carry
the same "COPYRIGHT 2025" stamp as the `text` query transform: a shared overlay on hundreds of
photos, which must not outrank a stamped copy's own original.
"""

import io
import random
from functools import cache

import common
import copy_detection
import numpy as np
from copy_detection import border, crop_area
from PIL import Image, ImageDraw, ImageEnhance, ImageFont, ImageOps
from sklearn.datasets import load_sample_images

ORIGINAL_SIDE = 1280
DISTRACTORS = 5200
STAMPED = 300
STAMP = "COPYRIGHT 2025"
# OpenCV samples that are drawings, logos, charts, text, test patterns or tiny.
NOT_PHOTOS = {
    "HappyFish",
    "LinuxLogo",
    "WindowsLogo",
    "cards",
    "chessboard",
    "chicky_512",
    "detect_blob",
    "digits",
    "ellipses",
    "gradient",
    "imageTextN",
    "imageTextR",
    "mask",
    "ml",
    "notes",
    "opencv-logo",
    "opencv-logo-white",
    "pca_test1",
    "smarties",
    "sudoku",
    "templ",
    "tmpl",
    "aloeGT",
    "box",
    "box_in_scene",
    "blox",
    "text_defocus",
    "text_motion",
    "licenseplate_motion",
    "starry_night",
}


@cache
def _stamp_font_path() -> str:
    fonts = sorted((common.photos_dir() / "fonts").glob("DejaVuSans-Bold.ttf"))
    if not fonts:
        raise SystemExit(f"fonts missing under {common.photos_dir()}/fonts: run `make photos`")
    return str(fonts[0])


def stamp(image: Image.Image) -> Image.Image:
    """One line of white text with a black outline, 90% of the width, across the middle."""
    image = image.copy()
    draw = ImageDraw.Draw(image)
    probe = ImageFont.truetype(_stamp_font_path(), 100)
    size = max(8, int(100 * 0.9 * image.width / draw.textlength(STAMP, font=probe)))
    font = ImageFont.truetype(_stamp_font_path(), size)
    middle = (image.width / 2, image.height / 2)
    draw.text(middle, STAMP, font=font, fill="white", anchor="mm", stroke_width=max(1, size // 15), stroke_fill="black")
    return image


def colour_shift(image: Image.Image) -> Image.Image:
    """A warm filter: red up, blue down, a little more contrast and saturation."""
    r, g, b = image.split()
    r = r.point(lambda v: min(255, int(v * 1.15 + 10)))
    b = b.point(lambda v: int(v * 0.8))
    warm = Image.merge("RGB", (r, g, b))
    return ImageEnhance.Color(ImageEnhance.Contrast(warm).enhance(1.15)).enhance(1.2)


def screenshot(image: Image.Image) -> Image.Image:
    """The photo as a phone shows it: on a 1080x2340 black screen, full width, status and tool bars."""
    screen = Image.new("RGB", (1080, 2340), (16, 16, 16))
    scale = 1080 / image.width
    shown = image.resize((1080, max(1, round(image.height * scale))), Image.Resampling.BICUBIC)
    if shown.height > 2000:
        shown = shown.resize((round(1080 * 2000 / shown.height), 2000), Image.Resampling.BICUBIC)
    screen.paste(shown, ((1080 - shown.width) // 2, (2340 - shown.height) // 2))
    draw = ImageDraw.Draw(screen)
    font = ImageFont.truetype(_stamp_font_path(), 40)
    draw.text((40, 30), "9:41", font=font, fill="white")
    draw.text((40, 2240), "Share    Edit    Delete", font=font, fill="white")
    return screen


def rotate(image: Image.Image, degrees: float) -> Image.Image:
    return image.rotate(degrees, Image.Resampling.BICUBIC, expand=False, fillcolor="black")


SECTION_4 = copy_detection.TRANSFORMS  # the edits both benchmarks make, made the same way
TRANSFORMS = {
    **{name: SECTION_4[name] for name in ("jpeg-q30", "resize-1/4", "mirror", "crop-10%", "crop-30%")},
    "crop-50%": lambda im: crop_area(im, 0.50),
    "rotate-5": SECTION_4["rotate-5"],
    "rotate-10": lambda im: rotate(im, -10),
    "rotate-90": SECTION_4["rotate-90"],
    "grey": SECTION_4["grey"],
    "colour-shift": colour_shift,
    "text": stamp,
    "border-white": SECTION_4["border-white"],
    "border-black": SECTION_4["border-black"],
    "screenshot": screenshot,
    "crop+mirror+warm": lambda im: colour_shift(ImageOps.mirror(crop_area(im, 0.3))),
    "half+text+border": lambda im: border(stamp(im.resize((im.width // 2, im.height // 2))), "black"),
}


@cache
def originals() -> tuple[list[str], list[bytes]]:
    photos = {**common.test_photos(), **common.mvtb_photos()}
    names = list(photos)
    return names, [common.jpeg(_fit(image, ORIGINAL_SIDE)) for image in photos.values()]


def query(original: int, transform: str) -> bytes:
    image = Image.open(io.BytesIO(originals()[1][original])).convert("RGB")
    return common.jpeg(TRANSFORMS[transform](image), 30 if transform == "jpeg-q30" else 90)


@cache
def distractor_sources() -> list[Image.Image]:
    return [image for _, image in _named_sources()]


@cache
def _named_sources() -> list[tuple[str, Image.Image]]:
    folder = common.photos_dir() / "opencv"
    found = []
    for path in sorted([*folder.glob("*.jpg"), *folder.glob("*.png")]):
        if path.stem in NOT_PHOTOS:
            continue
        with Image.open(path) as image:
            if image.mode == "RGB" and min(image.size) >= 300:
                found.append((path.stem, image.copy()))
    return found + [(f"sklearn-{i}", Image.fromarray(a)) for i, a in enumerate(load_sample_images().images)]


def distractors_from(source: str) -> list[int]:
    """The distractors (by index) cut from the source photo named `source` (an OpenCV sample's stem):
    `distractor`'s first choice, replayed."""
    names = [name for name, _ in _named_sources()]
    return [
        index
        for index in range(DISTRACTORS)
        if source in (names[i] for i in _chosen_sources(random.Random(common.SEED * 1000 + index), len(names)))
    ]


def _chosen_sources(rng: random.Random, count: int) -> list[int]:
    """The sources (by index) a distractor is cut from: one (60%), or two or four for a mosaic."""
    if rng.random() < 0.6:
        return [rng.randrange(count)]
    return rng.sample(range(count), rng.choice((2, 4)))


def stamped(index: int) -> bool:
    return index % (DISTRACTORS // STAMPED) == 0 and index // (DISTRACTORS // STAMPED) < STAMPED


def distractor(index: int) -> bytes:
    rng = random.Random(common.SEED * 1000 + index)
    sources = distractor_sources()
    parts = [_cut(rng, sources[i]) for i in _chosen_sources(rng, len(sources))]
    image = parts[0] if len(parts) == 1 else _mosaic(parts)
    image = _fit(image, rng.randint(480, 1024), grow=True)
    return common.jpeg(stamp(image) if stamped(index) else image)


def _cut(rng: random.Random, source: Image.Image) -> Image.Image:
    image = rotate(source, rng.uniform(-15, 15)) if rng.random() < 0.3 else source
    area, aspect = rng.uniform(0.2, 0.7), 2 ** rng.uniform(-1, 1)
    w = min(image.width, round((area * image.width * image.height * aspect) ** 0.5))
    h = min(image.height, round(area * image.width * image.height / w))
    left, top = rng.randint(0, image.width - w), rng.randint(0, image.height - h)
    if image is not source:  # keep clear of the black corners of the turn
        w, h = round(w * 0.8), round(h * 0.8)
        left, top = (image.width - w) // 2 + rng.randint(-w // 10, w // 10), (image.height - h) // 2
    cut = image.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        cut = ImageOps.mirror(cut)
    if rng.random() < 0.5:
        cut = ImageEnhance.Color(ImageEnhance.Brightness(cut).enhance(rng.uniform(0.8, 1.2))).enhance(
            rng.uniform(0.7, 1.3)
        )
    return cut


def _mosaic(parts: list[Image.Image]) -> Image.Image:
    side = 400
    columns = 2
    rows = len(parts) // columns
    canvas = Image.new("RGB", (side * columns, side * rows))
    for i, part in enumerate(parts):
        canvas.paste(ImageOps.fit(part, (side, side)), ((i % columns) * side, (i // columns) * side))
    return canvas


def _fit(image: Image.Image, side: int, grow: bool = False) -> Image.Image:
    scale = side / max(image.size)
    if scale >= 1 and not grow:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.LANCZOS)


def stored_images() -> int:
    return len(originals()[0]) + DISTRACTORS


def item_bytes(image_id: int) -> bytes:
    """Library image `image_id`: the originals first, then the distractors."""
    count = len(originals()[0])
    return originals()[1][image_id] if image_id < count else distractor(image_id - count)


def check_sources() -> None:
    sources = distractor_sources()
    sizes = np.array([image.size for image in sources])
    print(f"{len(sources)} distractor sources, median size {np.median(sizes, axis=0).astype(int).tolist()}")
