"""Real photographs for tests: scikit-image's own, plus the interior photos fetched by scripts/fetch-photos."""

import io
import os
from functools import cache
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

SKIMAGE_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field", "retina"]


def photos_dir() -> Path:
    return Path(os.environ.get("LOOKALIKE_TEST_PHOTOS", Path.home() / ".cache/lookalike/photos"))


@cache
def photos() -> dict[str, Image.Image]:
    """Name -> RGB photo; fails loudly when the fetched photos are missing (run `make photos`)."""
    found = {name: Image.fromarray(_skimage(name)) for name in SKIMAGE_PHOTOS}
    interior = sorted((photos_dir() / "interior").glob("*.jpg"))
    assert len(interior) >= 30, f"interior photos missing under {photos_dir()}: run `make photos`"
    for path in interior:
        with Image.open(path) as image:
            found[path.stem] = image.convert("RGB")
    return found


def _skimage(name: str) -> np.ndarray:
    if name == "motorcycle_left":
        return np.asarray(Image.open(Path(skimage.data.__file__).parent / "motorcycle_left.png").convert("RGB"))
    return getattr(skimage.data, name)()


def encode(image: Image.Image, fmt: str = "JPEG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 90} if fmt == "JPEG" and not options else options))
    return buffer.getvalue()


def opencv_sample(name: str) -> Image.Image:
    """One of OpenCV's sample images (box.png, graf1.png, ...), fetched from Debian's opencv-doc."""
    path = photos_dir() / "opencv" / name
    assert path.exists(), f"{path} missing: run `make photos`"
    with Image.open(path) as image:
        return image.convert("RGB")
