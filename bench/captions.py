"""Text-to-image ground truth: hand-written captions of real photos (bench/captions.tsv), one caption per photo.

Photo ids name their source: `skimage:<name>`, `sklearn:<file>` (load_sample_images), and `interior:`, `mvtb:` or
`opencv:` followed by a path under the fetched photos directory (scripts/fetch-photos).
"""

import csv
import os
from pathlib import Path

import skimage.data
from PIL import Image
from sklearn.datasets import load_sample_images

CAPTIONS_TSV = Path(__file__).resolve().parent / "captions.tsv"
FETCHED = ("interior", "mvtb", "opencv")


def load_captioned_photos(photos_dir: Path | None = None) -> list[tuple[str, Image.Image, str]]:
    """(id, RGB image, caption) for each row of captions.tsv, in file order; raises when a photo is missing."""
    if photos_dir is None:
        photos_dir = Path(os.environ.get("LOOKALIKE_TEST_PHOTOS", Path.home() / ".cache/lookalike/photos"))
    with CAPTIONS_TSV.open(newline="") as file:
        lines = (line for line in file if not line.startswith("#"))
        rows = [(row["photo"], row["caption"]) for row in csv.DictReader(lines, delimiter="\t")]
    sklearn_images = {}
    found = []
    for photo_id, caption in rows:
        source, name = photo_id.split(":", 1)
        if source == "skimage":
            image = _skimage(name)
        elif source == "sklearn":
            if not sklearn_images:
                samples = load_sample_images()
                sklearn_images = {Path(f).name: a for f, a in zip(samples.filenames, samples.images, strict=True)}
            image = Image.fromarray(sklearn_images[name])
        elif source in FETCHED:
            path = photos_dir / source / name
            if not path.is_file():
                extra = " --with-mvtb" if source == "mvtb" else ""
                raise FileNotFoundError(f"{photo_id}: no {path}; run `scripts/fetch-photos {photos_dir}{extra}`")
            with Image.open(path) as opened:
                image = opened.convert("RGB")
        else:
            raise ValueError(f"{CAPTIONS_TSV.name}: unknown source in photo id {photo_id!r}")
        found.append((photo_id, image.convert("RGB"), caption))
    return found


def _skimage(name: str) -> Image.Image:
    if name == "motorcycle_left":  # shipped with scikit-image but not exposed by skimage.data
        with Image.open(Path(skimage.data.__file__).parent / "motorcycle_left.png") as opened:
            return opened.convert("RGB")
    return Image.fromarray(getattr(skimage.data, name)())
