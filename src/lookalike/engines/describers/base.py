"""What every local descriptor does: one uint8 row per keypoint.

Every describer turns a grey image and its keypoints into an (n, dim) uint8 array. uint8 keeps the
stored features small (the store holds every descriptor for exact re-matching) and lets FAISS use
8-bit codes; L2 distances between quantised vectors follow those of the float descriptors.
"""

from typing import Protocol

import cv2
import numpy as np


class Describer(Protocol):
    """Made with the models folder (`Describer(models_dir)`), where a describer keeps downloaded weights."""

    name: str
    dim: int

    def describe(self, grey: np.ndarray, keypoints: list[cv2.KeyPoint]) -> np.ndarray:
        """(len(keypoints), dim) uint8 descriptors, one row per keypoint, in order."""


def quantize_unit(x: np.ndarray) -> np.ndarray:
    """Unit-length float descriptors (components well inside +-0.5) to uint8."""
    return np.clip(np.rint(x * 256 + 128), 0, 255).astype(np.uint8)
