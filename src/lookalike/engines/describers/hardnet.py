"""HardNet8 descriptors (Pultar 2020, kornia's architecture and weights) for OpenCV keypoints.

A learned 128-d descriptor that matches better than SIFT under viewpoint and lighting change. torch and kornia
are imported inside the class, so importing this module (and running the default engines) needs neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ...errors import ModelUnavailable
from ...models import RemoteWeights, fetch_weights
from ...models.registry import HARDNET8_WEIGHTS
from .base import quantize_unit

if TYPE_CHECKING:
    import cv2

PATCH_SIZE = 32  # what HardNet8 was trained on
BATCH_SIZE = 256  # patches per forward pass: bounds memory on images with many keypoints
# LAF scale = 6 * kp.size (kp.size is 2 sigma for OpenCV's SIFT, so 12 sigma): kornia_moons'
# laf_from_opencv_SIFT_kpts and kornia's own DoGHardNet frames, the scale HardNet is used at. The 32x32 patch
# then covers the square centre +- 6 * kp.size.
MEASUREMENT_REGION = 6.0


class HardNet8Describer:
    """HardNet8 descriptors of scale- and orientation-normalised 32x32 patches around given keypoints."""

    name = "hardnet8"
    dim = 128

    def __init__(self, models_dir: Path, weights: RemoteWeights = HARDNET8_WEIGHTS):
        import torch
        from kornia.feature import HardNet8

        path = fetch_weights(weights, models_dir)
        model = HardNet8(pretrained=False)
        try:
            # The checkpoint is a plain state dict (features.*, components, mean), as kornia loads it.
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
        except Exception as exc:  # a file with the right hash but another format is a setup error, not a 500
            raise ModelUnavailable(f"{path} is not a HardNet8 checkpoint ({exc})") from exc
        self._model = model.eval()

    def describe(self, grey: np.ndarray, keypoints: list[cv2.KeyPoint]) -> np.ndarray:
        """(len(keypoints), 128) uint8 descriptors, one row per keypoint, in order."""
        import torch
        from kornia.feature import extract_patches_from_pyramid, laf_from_center_scale_ori

        if not keypoints:
            return np.empty((0, self.dim), np.uint8)
        image = torch.from_numpy(np.ascontiguousarray(grey, dtype=np.float32) / 255)[None, None]
        centres = torch.tensor([kp.pt for kp in keypoints], dtype=torch.float32)[None]
        scales = torch.tensor([MEASUREMENT_REGION * kp.size for kp in keypoints], dtype=torch.float32)
        # kornia's orientation is minus OpenCV's angle (kornia_moons); OpenCV's -1 means "no orientation".
        angles = torch.tensor([-kp.angle if kp.angle >= 0 else 0.0 for kp in keypoints], dtype=torch.float32)
        lafs = laf_from_center_scale_ori(centres, scales.view(1, -1, 1, 1), angles.view(1, -1, 1))
        with torch.inference_mode():
            patches = extract_patches_from_pyramid(image, lafs, PATCH_SIZE)[0]
            descriptors = [self._model(batch) for batch in patches.split(BATCH_SIZE)]
        return quantize_unit(torch.cat(descriptors).numpy())
