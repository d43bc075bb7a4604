"""The photo inside a frame: a border, or a phone screen with its status and tool bars.

A screenshot of a photo, or a photo given a border, keeps the photo's pixels but not its outline, so
hashes and embeddings of the whole frame miss the original. Searching with the framed photo as well
finds it. The frame is the rows and columns of one flat colour around the largest block of other
ones: a border is flat, and a screen's bars are a little text on flat rows apart from the photo. A
photo's own flat edge of another colour (a white ceiling on a dark screen) stays with the photo.
"""

import numpy as np
from PIL import Image

SIDE = 256  # the frame is looked for in a thumbnail with a long side of at least this
# A row (or column) is the frame's when all but its 2% extremes lie within this many grey levels, and
# its median as near the frame's (the outermost pixels'): a border or a dark screen, through JPEG's
# ringing.
FLAT = 10
# Framed photos smaller than this share of the frame are left alone (an icon on a page is no copy of
# a photo), as are frames taking less than this share away (a photo's own dark edge).
SMALLEST = 0.1
LEAST_TRIMMED = 0.08


def and_framed_photo(image: Image.Image) -> list[Image.Image]:
    """`image`, and the photo a frame in it surrounds where there is one: what to search with."""
    framed = framed_photo(image)
    return [image] if framed is None else [image, framed]


def framed_photo(image: Image.Image) -> Image.Image | None:
    """The photo a frame surrounds, cut out of `image`, or None where no frame surrounds one."""
    factor = max(1, max(image.size) // SIDE)
    grey = np.asarray(image.reduce(factor).convert("L"), np.int16)  # box-averaged: the cheapest thumbnail
    frame = np.median(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]]))
    top, bottom = _longest_run_of_photo(grey, frame)
    if bottom - top < 2:
        return None
    left, right = _longest_run_of_photo(grey[top:bottom].T, frame)
    height, width = grey.shape
    kept = (bottom - top) * (right - left) / (height * width)
    surrounded = (top > 0 and bottom < height) or (left > 0 and right < width)  # a frame, not a blank wall
    if not surrounded or not SMALLEST <= kept <= 1 - LEAST_TRIMMED:
        return None
    box = [min(edge * factor, limit) for edge, limit in zip((left, top, right, bottom), image.size * 2)]
    if factor > 1:
        box = _sharpened(image, box, factor, frame)
    return image.crop(tuple(box)) if box[2] - box[0] >= 16 and box[3] - box[1] >= 16 else None


def _sharpened(image: Image.Image, box: list[int], factor: int, frame: float) -> list[int]:
    """`box`'s cut edges found again in full resolution, within a thumbnail pixel either side."""
    left, top, right, bottom = box
    width, height = image.size
    if top > 0:  # at least `factor`: a cut edge is a whole thumbnail pixel in
        band = image.crop((left, top - factor, right, top + factor))
        top = top - factor + _first_of_photo(band, frame)
    if bottom < height:
        end = min(bottom + factor, height)
        band = image.crop((left, bottom - factor, right, end)).transpose(Image.Transpose.FLIP_TOP_BOTTOM)
        bottom = end - _first_of_photo(band, frame)
    if left > 0:
        band = image.crop((left - factor, top, left + factor, bottom)).transpose(Image.Transpose.ROTATE_270)
        left = left - factor + _first_of_photo(band, frame)
    if right < width:
        end = min(right + factor, width)
        band = image.crop((right - factor, top, end, bottom)).transpose(Image.Transpose.ROTATE_90)
        right = end - _first_of_photo(band, frame)
    return [left, top, right, bottom]


def _first_of_photo(band: Image.Image, frame: float) -> int:
    """The first row of `band`, from the top, that is not the frame's, and one more: JPEG blurs a
    frame's edge into the photo's first row."""
    rows = np.asarray(band.convert("L"), np.int16)
    photo = np.flatnonzero(~_framing(rows, frame))
    return int(photo[0]) + 1 if len(photo) else len(rows)


def _longest_run_of_photo(rows: np.ndarray, frame: float) -> tuple[int, int]:
    """[start, end) of the longest run of rows that are not the frame's; (0, 0) when all are."""
    framing = _framing(rows, frame)
    edges = np.flatnonzero(np.diff(np.concatenate([[True], framing, [True]]).astype(np.int8)))
    starts, ends = edges[::2], edges[1::2]
    if not len(starts):
        return 0, 0
    longest = np.argmax(ends - starts)
    return int(starts[longest]), int(ends[longest])


def _framing(rows: np.ndarray, frame: float) -> np.ndarray:
    """Which rows are the frame's."""
    low, middle, high = np.percentile(rows, [2, 50, 98], axis=1)
    return (high - low <= FLAT) & (np.abs(middle - frame) <= FLAT)
