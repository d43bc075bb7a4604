"""Helpers shared by the benchmarks: photos, gallery-sized JPEGs, timing, tables, machine description.

Not a benchmark itself. Scripts that pin thread counts must set the environment *before* importing
this module, since it imports numpy.
"""

import io
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"  # gitignored: JSON results and the generated-photo cache
CACHE_DIR = RESULTS_DIR / "cache"
SEED = 20240601

SKIMAGE_PHOTOS = ["astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "hubble_deep_field", "retina"]
GALLERY_SIZE = (4000, 3000)  # 12 MP, a phone photo; portrait photos get (3000, 4000)
# mvtb images that are drawings, markers or test patterns, not photographs.
MVTB_SYNTHETIC = {
    "5points", "adelson", "apriltag12", "arucoboard", "eg-morph1", "eg-morph2", "fisheye_target",
    "multiblobs", "multiblobs_edgecase", "scale-space", "segmentation", "shark1", "shark2", "shark2a",
    "sharks", "wally",
}
# Files of a picture already in the set: keeping both would make "the" original ambiguous.
MVTB_SAME_PICTURE = {
    "church.png",  # church.jpg as PNG
    "castle2.png",  # castle.png with a glare painted on: an edited copy, not another photo
}


def photos_dir() -> Path:
    return Path(os.environ.get("LOOKALIKE_TEST_PHOTOS", Path.home() / ".cache/lookalike/photos"))


def test_photos() -> dict[str, Image.Image]:
    """The test suite's photos: scikit-image's 7 photos plus the 39 interior JPEGs, as RGB images."""
    found = {name: Image.fromarray(_skimage(name)) for name in SKIMAGE_PHOTOS}
    interior = sorted((photos_dir() / "interior").glob("*.jpg"))
    if len(interior) < 30:
        raise SystemExit(f"interior photos missing under {photos_dir()}: run `make photos`")
    for path in interior:
        with Image.open(path) as image:
            found[path.stem] = image.convert("RGB")
    return found


def mvtb_photos() -> dict[str, Image.Image]:
    """The Machine Vision Toolbox images that are real photographs (RGB), keyed by relative path.

    Skipped: mode '1' (binary), any side under 200 px, the drawings in MVTB_SYNTHETIC, and
    MVTB_SAME_PICTURE. Empty (with a note on stderr) when the mvtb photos were not fetched.
    """
    root = photos_dir() / "mvtb"
    paths = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg"))
    if not paths:
        print(f"note: no mvtb photos under {root} (scripts/fetch-photos DIR --with-mvtb)", file=sys.stderr)
    found = {}
    for path in paths:
        name = str(path.relative_to(root))
        if path.stem in MVTB_SYNTHETIC or name in MVTB_SAME_PICTURE:
            continue
        with Image.open(path) as image:
            if image.mode == "1" or min(image.size) < 200:
                continue
            found[f"mvtb/{name}"] = _flatten(image)
    return found


def _flatten(image: Image.Image) -> Image.Image:
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, "white")
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _skimage(name: str) -> np.ndarray:
    if name == "motorcycle_left":
        return np.asarray(Image.open(Path(skimage.data.__file__).parent / "motorcycle_left.png").convert("RGB"))
    return getattr(skimage.data, name)()


def jpeg(image: Image.Image, quality: int = 90) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def gallery_size(image: Image.Image) -> tuple[int, int]:
    width, height = GALLERY_SIZE
    return (height, width) if image.height > image.width else (width, height)


def to_gallery(image: Image.Image) -> Image.Image:
    """Resized (not cropped) to 4000x3000, or 3000x4000 for portrait photos."""
    return image.resize(gallery_size(image), Image.Resampling.BICUBIC)


def gallery_jpegs() -> dict[str, bytes]:
    """The test photos re-encoded at 4000x3000, JPEG quality 90; cached under bench/results/cache."""
    folder = CACHE_DIR / "gallery"
    folder.mkdir(parents=True, exist_ok=True)
    found = {}
    for name, image in test_photos().items():
        path = folder / f"{name}.jpg"
        if not path.exists():
            path.write_bytes(jpeg(to_gallery(image)))
        found[name] = path.read_bytes()
    return found


# -- indexes outside a library ---------------------------------------------------------------------


class ArraySource:
    """Fixed-size features held in memory, image id = row, read as an index reads the store's
    (lookalike.indexes.FeatureSource): benchmarks build a VectorIndex on it without an LMDB store.
    A compressed index reads its candidates back through it to re-score them."""

    def __init__(self, spec, features: np.ndarray):
        self.spec = spec
        self.features = features

    def read(self, image_ids=None) -> tuple[np.ndarray, np.ndarray]:
        if image_ids is None:
            return np.arange(len(self.features), dtype=np.int64), self.features
        ids = np.asarray(image_ids, np.int64)
        ids = ids[(ids >= 0) & (ids < len(self.features))]
        return ids, self.features[ids]

    def ids(self) -> np.ndarray:
        return np.arange(len(self.features), dtype=np.int64)

    def count(self) -> int:
        return len(self.features)


# -- timing and statistics -------------------------------------------------------------------------


def timed(fn, *args):
    """(seconds, result) of one call."""
    started = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - started, result


def percentile(values, q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def median(values) -> float:
    return float(statistics.median(values))


# -- output ------------------------------------------------------------------------------------------


def table(headers: list[str], rows: list[list]) -> str:
    """A Markdown table; floats keep the formatting the caller gave them (pass strings)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def save_json(name: str, data) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=str))
    return path


def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        ram = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        ram = 0
    packages = ["numpy", "scipy", "pillow", "faiss-cpu", "imagehash", "lmdb", "psutil"]
    versions = {}
    for package in packages:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "-"
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(ram / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "versions": versions,
    }


def machine_markdown() -> str:
    m = machine()
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    return (
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB RAM, {m['os']}; "
        f"Python {m['python']}; {versions}"
    )


def cpu_ticks() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat; (nan, nan) elsewhere."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    hertz = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq) / hertz, steal / hertz


def busy_cores(seconds: float = 1.0) -> float:
    """How many cores' worth of CPU the whole machine used over `seconds` (other processes included)."""
    before = cpu_ticks()[0]
    time.sleep(seconds)
    return (cpu_ticks()[0] - before) / seconds
