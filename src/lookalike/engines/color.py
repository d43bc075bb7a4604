"""8x8x8 RGB histogram, normalised by pixel count, compared by L1: "similar palette"."""

import numpy as np
from PIL import Image

from ..features import FeatureSpec
from .base import Engine
from .framing import and_framed_photo

BINS = 8
# JPEG's reduced-size decode averages pixels into in-between colours: at a 256-px shorter side that
# moved histograms of 4000x3000 photos by up to 0.14 L1 (over the 0.1 duplicate threshold); at 512
# by at most 0.053 (one fine-textured mvtb PNG: 0.155), against ~1.4-1.6 between different photos
# (bench/color_decode_size.py).
SIDE = 512


class ColorHistogram(Engine):
    name = "color"
    spec = FeatureSpec(kind="float", dim=BINS**3, metric="l1")
    decode_side = SIDE
    duplicate_threshold = 0.1

    def extract(self, image: Image.Image) -> np.ndarray:
        if min(image.size) > SIDE:
            # Nearest keeps real pixel colours: a subsample's histogram estimates the full one,
            # where averaging filters would invent in-between colours at every edge.
            image = image.resize(_shorter_side_to(SIDE, image.size), Image.Resampling.NEAREST)
        pixels = np.asarray(image, dtype=np.uint8).reshape(-1, 3) >> 5  # 256 levels -> 8 bins
        bins = (pixels[:, 0].astype(np.int32) << 6) | (pixels[:, 1].astype(np.int32) << 3) | pixels[:, 2]
        return (np.bincount(bins, minlength=BINS**3) / len(bins)).astype(np.float32)

    def query_variants(self, image: Image.Image, mirrored: bool = False) -> list[np.ndarray]:
        """The histogram, and the framed photo's where a frame surrounds one (a screen's black is no
        colour of the photo's)."""
        return [self.extract(variant) for variant in and_framed_photo(image)]


def _shorter_side_to(side: int, size: tuple[int, int]) -> tuple[int, int]:
    width, height = size
    scale = side / min(width, height)
    return max(side, round(width * scale)), max(side, round(height * scale))
