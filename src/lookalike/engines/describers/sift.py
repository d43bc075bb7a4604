"""SIFT and RootSIFT descriptors, from OpenCV."""

from pathlib import Path

import cv2
import numpy as np


class Sift:
    """OpenCV's SIFT descriptor: already integers in 0..255."""

    name = "sift"
    dim = 128

    def __init__(self, models_dir: Path | None = None) -> None:
        self._sift = cv2.SIFT_create()

    def describe(self, grey: np.ndarray, keypoints: list[cv2.KeyPoint]) -> np.ndarray:
        if not keypoints:
            return np.empty((0, self.dim), np.uint8)
        described, descriptors = self._sift.compute(grey, keypoints)
        if len(described) != len(keypoints):  # OpenCV drops keypoints it cannot describe
            raise ValueError("SIFT dropped keypoints; describe only keypoints SIFT detected")
        return self._convert(descriptors)

    def _convert(self, descriptors: np.ndarray) -> np.ndarray:
        return np.clip(np.rint(descriptors), 0, 255).astype(np.uint8)


class RootSift(Sift):
    """SIFT, L1-normalised and square-rooted (Arandjelovic & Zisserman 2012): Hellinger distance
    becomes L2, which matches better than raw SIFT at no cost."""

    name = "rootsift"
    # RootSIFT components stay under 0.5 (SIFT clips each bin at 0.2 of the norm): 512 keeps 8 bits busy.
    _SCALE = 512

    def _convert(self, descriptors: np.ndarray) -> np.ndarray:
        root = np.sqrt(descriptors / np.maximum(descriptors.sum(axis=1, keepdims=True), 1e-7))
        return np.clip(np.rint(root * self._SCALE), 0, 255).astype(np.uint8)
