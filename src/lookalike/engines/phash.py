"""576-bit DCT perceptual hash: the near-duplicate finder."""

import numpy as np
from PIL import Image

from ..features import FeatureSpec
from .base import Engine
from .framing import framed_photo

HASH_SIDE = 96
BLOCK = 24


def _dct_rows(n: int, keep: int) -> np.ndarray:
    """The first `keep` rows of the unnormalised DCT-II matrix (scipy.fft.dct's convention, type 2)."""
    k = np.arange(keep)[:, None]
    i = np.arange(n)[None, :]
    return 2.0 * np.cos(np.pi * k * (2 * i + 1) / (2 * n))


# Only the top-left 24x24 coefficients are kept, so two 24x96 products replace a full 96x96 2-D DCT.
_DCT = _dct_rows(HASH_SIDE, BLOCK)


def phash_bits(grey: np.ndarray) -> np.ndarray:
    """96x96 grey pixels to 72 bytes: coefficient > median of the 24x24 block, row-major, MSB first."""
    block = _DCT @ grey.astype(np.float64) @ _DCT.T
    return np.packbits(block > np.median(block))


class PHash(Engine):
    name = "phash"
    spec = FeatureSpec(kind="binary", dim=BLOCK * BLOCK, metric="hamming")
    # Decoding to a shorter side of at least 288 keeps every test photo within 8 bits of a full
    # decode (192 drifted up to 22 bits); a 4000x3000 JPEG still decodes at 1/8 scale.
    decode_side = 3 * HASH_SIDE
    duplicate_threshold = 64

    def extract(self, image: Image.Image) -> np.ndarray:
        return phash_bits(self._grey(image))

    def query_variants(self, image: Image.Image, mirrored: bool = True) -> list[np.ndarray]:
        """The hash, its mirror image's and its quarter turns' (a phone's lost orientation), and the
        framed photo's and its mirror's where a frame surrounds one: each costs one more 72-byte hash,
        and a mirrored, turned or framed copy is still a copy."""
        grey = self._grey(image)
        turned = [np.rot90(grey, turns) for turns in (1, 2, 3)]
        variants = [grey, grey[:, ::-1], *turned]
        framed = framed_photo(image)
        if framed is not None:
            inside = self._grey(framed)
            variants += [inside, inside[:, ::-1]]
        return [phash_bits(variant) for variant in variants]

    @staticmethod
    def _grey(image: Image.Image) -> np.ndarray:
        return np.asarray(image.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS))
