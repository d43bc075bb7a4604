"""The photo inside a frame (a border, a phone's screen) is cut out, on real photos; photos without a
frame are left alone, and the framed photo hashes as its original does."""

import io

import cv2
import numpy as np
import pytest
from photos import encode, photos
from PIL import Image, ImageOps
from words_in_photos import on_a_phone

from lookalike.engines import create_engine
from lookalike.engines.framing import framed_photo

FRAMED = ["astronaut", "chelsea", "coffee", "rocket", "pexels-2560067", "pexels-4389955"]


def bordered(photo: Image.Image, colour: str) -> tuple[Image.Image, tuple[int, int, int, int]]:
    dx, dy = photo.width // 10, photo.height // 8
    return ImageOps.expand(photo, (dx, dy, dx, dy), fill=colour), (dx, dy, dx + photo.width, dy + photo.height)


def reencoded(image: Image.Image) -> Image.Image:
    return Image.open(io.BytesIO(encode(image, quality=85))).convert("RGB")


FRAMES = {
    "phone screen": on_a_phone,
    "white border": lambda photo: bordered(photo, "white"),
    "black border": lambda photo: bordered(photo, "black"),
}
# This photo's top is a white ceiling: with a white border it is the frame's, as far as can be seen.
WHITE_EDGED = {"pexels-2560067"}


@pytest.mark.parametrize(
    "name, frame",
    [(name, frame) for frame in FRAMES for name in FRAMED if not (frame == "white border" and name in WHITE_EDGED)],
)
def test_the_framed_photo_is_cut_out_and_hashes_as_its_original(name, frame):
    photo = photos()[name]
    framed, (left, top, right, bottom) = FRAMES[frame](photo)
    cut = framed_photo(reencoded(framed))
    assert cut is not None
    # Inside the photo but for 1.5% of the frame's long side (the frame is found in a 256-px
    # thumbnail), and most of it: a photo's own blank edge (a white ceiling) goes with the frame.
    tolerance = 0.015 * max(framed.size)
    x0, y0, x1, y1 = np.array([0, 0, *cut.size]) + _offset(framed, cut)
    assert x0 >= left - tolerance and y0 >= top - tolerance and x1 <= right + tolerance and y1 <= bottom + tolerance
    assert (x1 - x0) * (y1 - y0) >= 0.9 * (right - left) * (bottom - top), (
        (x0, y0, x1, y1),
        (left, top, right, bottom),
    )
    phash = create_engine("phash")
    distance = np.unpackbits(phash.extract(cut) ^ phash.extract(photo)).sum()
    assert distance <= phash.duplicate_threshold


def _offset(framed: Image.Image, cut: Image.Image) -> np.ndarray:
    """Where `cut` lies in `framed` (its top-left corner, twice), found by matching it back."""
    whole, part = np.asarray(framed.convert("L"), np.float32), np.asarray(cut.convert("L"), np.float32)
    scores = cv2.matchTemplate(whole, part, cv2.TM_SQDIFF)
    y, x = np.unravel_index(np.argmin(scores), scores.shape)
    return np.array([x, y, x, y])


def test_photos_without_a_frame_are_left_alone():
    named = [name for name in photos() if name not in ("hubble_deep_field", "retina")]
    left_alone = [name for name in named if framed_photo(reencoded(photos()[name])) is None]
    # The interior photos and scikit-image's photos have no frame; a black sky or a retina's dark
    # surround is one (hubble, retina: left out above), and cutting it costs only a search variant.
    assert len(left_alone) >= 0.95 * len(named), sorted(set(named) - set(left_alone))
    assert framed_photo(ImageOps.expand(photos()["retina"], 40, fill="white")) is not None


def test_engines_search_with_the_framed_photo_too():
    photo = photos()["chelsea"]
    screen, _ = on_a_phone(photo)
    for name, plain in (("phash", 5), ("color", 1), ("global", 3)):
        engine = create_engine(name)
        assert len(engine.query_variants(photo)) == plain
        assert len(engine.query_variants(screen)) > plain


def test_local_keypoints_are_the_framed_photos():
    """A border has no keypoints and a phone's bars only those of their words: the keypoints of a
    framed image are found in the photo alone, which then has the working frame to itself."""
    local = create_engine("local")
    photo = photos()["chelsea"]
    screen, _ = on_a_phone(photo)
    keypoints = local.extract(screen)
    framed = local.extract(framed_photo(screen))
    assert np.array_equal(keypoints.xy, framed.xy) and np.array_equal(keypoints.descriptors, framed.descriptors)
    assert local.verify(keypoints, local.extract(photo)).precise >= 100
