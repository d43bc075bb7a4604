"""What the local features tests share: the gallery of real photos, its ids, crops and query helpers.

Extraction costs a few tenths of a second per photo, so one library of every test photo plus some of
OpenCV's samples is built once per session (`local_gallery_dir`), and each crop's query variants are
made once (`crop_queries`): test_local_engine.py and test_point_index.py both need them, and building
them twice would cost about a minute. Tests that only search share the gallery open (`local_gallery`),
tests that write get a copy of its data directory. Crops are cut once, with a seeded rng.

The fixtures reach the test modules through tests/conftest.py, so that each is built once per session.
"""

import shutil
from functools import cache
from pathlib import Path

import numpy as np
import pytest
from photos import encode, opencv_sample
from photos import photos as load_photos
from PIL import Image

from lookalike.engines import decode_for_engine
from lookalike.library import Library
from lookalike.store import ImageRecord

# The skimage photos with texture enough that a crop of them must always be found.
TEXTURED = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left"]
# OpenCV samples stored beside the photos: the scene the box is in, graf1 (graf3 is a query), and other
# real scenes as distractors that also give the library the descriptors training needs.
SAMPLES = [
    "box_in_scene.png", "graf1.png", "aero1.jpg", "baboon.jpg", "building.jpg", "fruits.jpg", "home.jpg",
    "messi5.jpg", "starry_night.jpg", "stuff.jpg", "butterfly.jpg", "board.jpg", "blox.jpg", "orange.jpg",
    "apple.jpg", "smarties.png", "HappyFish.jpg", "squirrel_cls.jpg", "Blender_Suzanne1.jpg", "leuvenA.jpg",
    "cards.png", "notes.png", "sudoku.png",
]  # fmt: skip
CROP_AREA = 0.3


@cache
def photos() -> dict[str, Image.Image]:
    return load_photos()


@cache
def ids() -> dict[str, int]:
    """Not 0..n-1: image ids are not positions in any index."""
    found = {name: 1000 + 7 * number for number, name in enumerate(photos())}
    return found | {name: 5000 + 3 * number for number, name in enumerate(SAMPLES)}


@cache
def crops() -> dict[str, Image.Image]:
    """Each photo cut down to CROP_AREA of its area, at a seeded random place, at full resolution."""
    rng = np.random.default_rng(0)
    found = {}
    for name, photo in photos().items():
        side = np.sqrt(CROP_AREA)
        width, height = round(photo.width * side), round(photo.height * side)
        left, top = int(rng.integers(0, photo.width - width + 1)), int(rng.integers(0, photo.height - height + 1))
        found[name] = photo.crop((left, top, left + width, top + height))
    return found


@cache
def small(name: str, side: int = 1024) -> Image.Image:
    image = (photos()[name] if name in photos() else opencv_sample(name)).copy()
    image.thumbnail((side, side))
    return image


@cache
def small_crop(name: str, side: int = 1024) -> Image.Image:
    """The middle of `small(name)`, 55% of each side (30% of the area)."""
    image = small(name, side)
    left, top = image.width // 5, image.height // 4
    return image.crop((left, top, left + image.width * 55 // 100, top + image.height * 55 // 100))


def flat_images() -> dict[str, Image.Image]:
    """Images without a single keypoint."""
    gradient = np.tile(np.linspace(0, 255, 800).astype(np.uint8), (600, 1))
    return {"grey": Image.new("RGB", (800, 600), (128, 128, 128)), "gradient": Image.fromarray(gradient).convert("RGB")}


def sample_png(name: str) -> bytes:
    return encode(opencv_sample(name), "PNG")


def copy_of(data_dir: Path, target: Path) -> Path:
    return Path(shutil.copytree(data_dir, target))


def stored(library: Library, names: list[str]) -> list[tuple[ImageRecord, dict]]:
    """Items for `add_many` with the gallery's stored features: no extraction."""
    return [(ImageRecord(ids()[n], n), {"local": library.store.feature("local", ids()[n])}) for n in names]


def found_ids(matches) -> list[int]:
    return [m.image_id for m in matches]


def crop_results(library: Library, queries: dict[str, list], k: int = 3) -> dict[str, list[tuple[int, int]]]:
    index = library.indexes["local"]
    return {name: [(n.image_id, n.score) for n in index.search(variants, k)] for name, variants in queries.items()}


def misses_of(results: dict[str, list[tuple[int, int]]]) -> dict[str, list[tuple[int, int]]]:
    return {name: found for name, found in results.items() if not found or found[0][0] != ids()[name]}


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def local_gallery_dir(tmp_path_factory) -> Path:
    """A closed data directory holding every test photo and SAMPLES in the local engine, added as uploads are."""
    data_dir = tmp_path_factory.mktemp("local-gallery")
    with Library(data_dir, ["local"]) as library:
        for name, photo in photos().items():
            library.add(ids()[name], encode(photo), name)
        for name in SAMPLES:
            library.add(ids()[name], sample_png(name), name)
    return data_dir


@pytest.fixture(scope="session")
def local_gallery(local_gallery_dir, tmp_path_factory):
    """The gallery open, for tests that only search it."""
    with Library(copy_of(local_gallery_dir, tmp_path_factory.mktemp("shared") / "data"), ["local"]) as library:
        yield library


@pytest.fixture(scope="session")
def crop_queries(local_gallery) -> dict[str, list]:
    """Each crop's query variants, made as a search makes them (JPEG upload, decoded, extracted): once."""
    engine = local_gallery.engines["local"]
    return {name: engine.query_variants(decode_for_engine(engine, encode(crop))) for name, crop in crops().items()}
