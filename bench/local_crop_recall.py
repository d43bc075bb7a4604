"""Local features engine: crop recall@1 on real photos among thousands of distractors.

Originals: the 46 test photos (scikit-image + interior) and the Machine Vision Toolbox photos
(common.mvtb_photos()), each encoded as JPEG q90 at its own size. Distractors come only from
*other* real photos, so no distractor legitimately contains a query: 9 further scikit-image photos
and the photographs among OpenCV's samples, less those that are mvtb photos too (same file name)
and the chessboard calibration series (the room of mvtb/calibration). Per source photo: its 2x2,
3x3 and 4x4 tiles plus enough random crops (20-60% of the area) to reach the count, each with some
of: rotation 3-12 degrees, a per-channel colour gain 0.8-1.2, a downscale to 50-80%, a mirror.
A seeded subset of `--distractors` of them is used. Every stored image goes through the real path:
JPEG q90 -> `engines.decode_for_engine` -> `engine.extract`, in a pool of 2 processes (one thread each),
then `Library.add_many` in batches of 500 into a Library(tmp, ["local"]) with the descriptor chosen.

Queries, one each per original (random position, seeded), JPEG q90, searched with
`library.similar_to_image("local", jpeg, k=5)`: crops keeping 50%, 25% and 10% of the area (same
aspect); the 25% crop rotated 10 degrees (same canvas, black corners); the 25% crop downscaled to
half its sides; the 25% crop mirrored, searched with mirrored=True. A hit is the original at rank 1.

First a few originals' queries run against the flat (exact, untrained) index; then
`library.train("local")` builds the default OPQ+IVF+PQ index (nprobe 16) and every query
runs again. Extracted features are cached under ~/.cache/lookalike/bench/local_crop_recall/.

hardnet8 is not measured: its weights download from the internet on first use.

--sweep: rootsift with 1,000 distractors, TOTAL_KEYPOINTS/PER_QUADRANT 200/50 and 400/100 times
WORKING_SIDE 1024 and 1536 (module constants of lookalike.engines.local, and
LocalFeatures.decode_side, monkeypatched in every process: a parameter sweep, not the defaults).

Run: .venv/bin/python bench/local_crop_recall.py                      # quick: rootsift, 1,000 distractors
     .venv/bin/python bench/local_crop_recall.py --full               # rootsift, sift, xfeat; 5,000 distractors
     .venv/bin/python bench/local_crop_recall.py --sweep
"""

import argparse
import hashlib
import io
import json
import os
import pickle
import re
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import skimage.data
from PIL import Image, ImageOps

import common
from lookalike.engines import create_engine, decode_for_engine
from lookalike.features import Keypoints
from lookalike.library import Library
from lookalike.store import ImageRecord

CACHE = Path.home() / ".cache/lookalike/bench/local_crop_recall"
MAX_PIXELS = 200_000_000
DISTRACTOR_ID0 = 1_000_000
OPENCV_NOT_PHOTOS = {
    "LinuxLogo",
    "WindowsLogo",
    "opencv-logo",
    "opencv-logo-white",
    "chessboard",
    "gradient",
    "digits",
    "imageTextN",
    "imageTextR",
    "ml",
    "notes",
    "detect_blob",
    "ellipses",
    "mask",
    "pca_test1",
    "templ",
    "tmpl",
    "aloeGT",
    "text_defocus",
    "text_motion",
    "sudoku",
    "cards",
    "HappyFish",
    "pic1",
    "pic2",
    "pic3",
    "pic4",
    "pic5",
    "pic6",
}
# The chessboard calibration series: the same room as mvtb/calibration, which are originals.
OPENCV_CALIBRATION = re.compile(r"(left|right)\d\d")
# scikit-image photos that are not test photos (cat is chelsea, stereo_motorcycle the motorcycle).
SKIMAGE_SOURCES = ["camera", "coins", "moon", "brick", "grass", "gravel", "immunohistochemistry", "cell", "clock"]
TRANSFORMS = ["crop-50%", "crop-25%", "crop-10%", "crop-25%+rot10", "crop-25%+half", "crop-25%+mirror"]


# -- photos ------------------------------------------------------------------------------------------


def split_photos() -> tuple[dict[str, Image.Image], dict[str, Image.Image]]:
    """(originals, distractor sources): disjoint sets of real photos, no scene in both."""
    originals = {**common.test_photos(), **common.mvtb_photos()}
    mvtb_stems = {Path(name).stem for name in originals if name.startswith("mvtb/")}
    sources = {
        f"skimage/{name}": Image.fromarray(getattr(skimage.data, name)()).convert("RGB") for name in SKIMAGE_SOURCES
    }
    for path in sorted((common.photos_dir() / "opencv").glob("*")):
        if (
            path.stem in OPENCV_NOT_PHOTOS
            or path.stem in mvtb_stems
            or OPENCV_CALIBRATION.fullmatch(path.stem)
            or path.suffix.lower() not in (".jpg", ".png")
        ):
            continue
        with Image.open(path) as image:
            if min(image.size) >= 200 and image.mode != "1":
                sources[f"opencv/{path.name}"] = image.convert("RGB")
    return originals, sources


def crop_box(size: tuple[int, int], area: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    width, height = size
    w, h = max(16, round(width * area**0.5)), max(16, round(height * area**0.5))
    left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
    return left, top, left + w, top + h


def recipes(sources: dict[str, Image.Image], n: int, seed: int) -> list[tuple]:
    """(source name, box, angle, colour gains, scale, mirrored) for `n` distractors, seeded."""
    rng = np.random.default_rng(seed)
    found = []
    random_crops = max(16, -(-n // len(sources)) - 29)
    for name, image in sources.items():
        width, height = image.size
        for grid in (2, 3, 4):
            for row in range(grid):
                for col in range(grid):
                    box = (
                        col * width // grid,
                        row * height // grid,
                        (col + 1) * width // grid,
                        (row + 1) * height // grid,
                    )
                    found.append((name, box, 0.0, (1.0, 1.0, 1.0), 1.0, False))
        for _ in range(random_crops):
            box = crop_box(image.size, float(rng.uniform(0.2, 0.6)), rng)
            angle = float(rng.uniform(3, 12) * rng.choice([-1, 1])) if rng.random() < 0.5 else 0.0
            gains = tuple(float(g) for g in rng.uniform(0.8, 1.2, 3)) if rng.random() < 0.5 else (1.0, 1.0, 1.0)
            scale = float(rng.uniform(0.5, 0.8)) if rng.random() < 0.5 else 1.0
            found.append((name, box, angle, gains, scale, bool(rng.random() < 0.3)))
    if n > len(found):
        raise SystemExit(f"only {len(found)} distractors can be made from {len(sources)} source photos")
    return [found[i] for i in sorted(rng.choice(len(found), n, replace=False))]


def make_distractor(image: Image.Image, recipe: tuple) -> Image.Image:
    _, box, angle, gains, scale, mirrored = recipe
    out = image.crop(box)
    if angle:
        out = out.rotate(angle, Image.Resampling.BICUBIC, expand=False, fillcolor="black")
    if gains != (1.0, 1.0, 1.0):
        out = Image.merge(
            "RGB", [band.point(lambda v, g=g: min(255, int(v * g))) for band, g in zip(out.split(), gains)]
        )
    if scale != 1.0:
        out = out.resize(
            (max(16, round(out.width * scale)), max(16, round(out.height * scale))), Image.Resampling.LANCZOS
        )
    return ImageOps.mirror(out) if mirrored else out


def queries(original: Image.Image, rng: np.random.Generator) -> dict[str, bytes]:
    """One JPEG q90 per transform in TRANSFORMS."""
    crops = {area: original.crop(crop_box(original.size, area, rng)) for area in (0.5, 0.25, 0.1)}
    rotated = original.crop(crop_box(original.size, 0.25, rng))
    rotated = rotated.rotate(10, Image.Resampling.BICUBIC, expand=False, fillcolor="black")
    half = original.crop(crop_box(original.size, 0.25, rng))
    half = half.resize((max(16, half.width // 2), max(16, half.height // 2)), Image.Resampling.LANCZOS)
    mirrored = ImageOps.mirror(original.crop(crop_box(original.size, 0.25, rng)))
    images = [crops[0.5], crops[0.25], crops[0.1], rotated, half, mirrored]
    return {name: common.jpeg(image) for name, image in zip(TRANSFORMS, images)}


def all_queries(original_jpegs: list[bytes]) -> list[dict[str, bytes]]:
    rng = np.random.default_rng(common.SEED)
    return [queries(Image.open(io.BytesIO(data)).convert("RGB"), rng) for data in original_jpegs]


# -- extraction in a pool ------------------------------------------------------------------------------

_WORKER: dict = {}


def apply_patch(patch: dict) -> None:
    """Monkeypatch lookalike.engines.local constants (the sweep only); decode_side follows WORKING_SIDE."""
    from lookalike.engines import local

    for name, value in patch.items():
        setattr(local, name, value)
    if "WORKING_SIDE" in patch:
        local.LocalFeatures.decode_side = patch["WORKING_SIDE"] * 3 // 4


def _init(descriptor: str, patch: dict, with_sources: bool) -> None:
    import cv2

    cv2.setNumThreads(1)
    if descriptor == "xfeat":
        import torch

        torch.set_num_threads(1)
    apply_patch(patch)
    _WORKER["engine"] = create_engine("local", {"descriptor": descriptor})
    _WORKER["sources"] = split_photos()[1] if with_sources else {}


def _extract(task: tuple) -> tuple[np.ndarray, np.ndarray, float]:
    kind, payload = task
    if kind == "recipe":
        payload = common.jpeg(make_distractor(_WORKER["sources"][payload[0]], payload))
    engine = _WORKER["engine"]
    started = time.process_time()
    feature = engine.extract(decode_for_engine(engine, payload, MAX_PIXELS))
    return feature.xy, feature.descriptors, time.process_time() - started


def extracted(descriptor: str, names: list[str], tasks: list[tuple], patch: dict, tag: str) -> dict:
    """{"names", "features" (Keypoints), "cpu_s" (decode + extract, per image)}, cached on disk."""
    key = hashlib.sha256(
        json.dumps(
            [descriptor, names, [t if t[0] == "recipe" else len(t[1]) for t in tasks], patch], default=str
        ).encode()
    ).hexdigest()[:12]
    # The cache holds plain (xy, descriptors) arrays, not Keypoints: a pickled class breaks the cache
    # whenever the class moves (it did, from lookalike.engines to lookalike.features). "-arrays" keeps
    # older caches, which pickled Keypoints, from being read.
    path = CACHE / f"{tag}-{descriptor}-{key}-arrays.pkl"
    if path.exists():
        with open(path, "rb") as f:
            cached = pickle.load(f)
        return {**cached, "features": [Keypoints(xy, d) for xy, d in cached["features"]]}
    started = time.perf_counter()
    with_sources = any(t[0] == "recipe" for t in tasks)
    with ProcessPoolExecutor(2, get_context("spawn"), _init, (descriptor, patch, with_sources)) as pool:
        done = list(pool.map(_extract, tasks, chunksize=8))
    result = {
        "names": names,
        "features": [(xy, d) for xy, d, _ in done],
        "cpu_s": [s for _, _, s in done],
        "wall_s": time.perf_counter() - started,
    }
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".tmp"), "wb") as f:
        pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
    path.with_suffix(".tmp").rename(path)
    return {**result, "features": [Keypoints(xy, d) for xy, d in result["features"]]}


def dataset(descriptor: str, n_distractors: int, patch: dict | None = None) -> tuple[dict, dict, list[dict]]:
    """(originals' features, distractors' features, queries): what every local benchmark starts from."""
    patch = patch or {}
    originals, sources = split_photos()
    original_jpegs = [common.jpeg(image) for image in originals.values()]
    found_originals = extracted(descriptor, list(originals), [("jpeg", d) for d in original_jpegs], patch, "originals")
    chosen = recipes(sources, n_distractors, common.SEED)
    names = [f"{r[0]}#{i}" for i, r in enumerate(chosen)]
    found_distractors = extracted(
        descriptor, names, [("recipe", r) for r in chosen], patch, f"distractors{n_distractors}"
    )
    return found_originals, found_distractors, all_queries(original_jpegs)


def fill(library: Library, originals: dict, distractors: dict) -> float:
    """Add everything through Library.add_many in batches of 500; returns the seconds it took."""
    items = [
        (ImageRecord(i, n), {"local": f}) for i, (n, f) in enumerate(zip(originals["names"], originals["features"]))
    ]
    items += [
        (ImageRecord(DISTRACTOR_ID0 + i, n), {"local": f})
        for i, (n, f) in enumerate(zip(distractors["names"], distractors["features"]))
    ]
    started = time.perf_counter()
    for i in range(0, len(items), 500):
        library.add_many(items[i : i + 500])
    return time.perf_counter() - started


# -- searching -----------------------------------------------------------------------------------------


def search_all(library: Library, query_sets: list[dict[str, bytes]], originals: range) -> dict[str, list]:
    """Per transform: one [hit, top id, matches of the top result, seconds] per original."""
    found: dict[str, list] = {t: [] for t in TRANSFORMS}
    for image_id in originals:
        for transform, data in query_sets[image_id].items():
            started = time.perf_counter()
            matches = library.similar_to_image("local", data, k=5, mirrored=transform.endswith("mirror"))
            seconds = time.perf_counter() - started
            top = matches[0] if matches else None
            found[transform].append(
                [
                    top is not None and top.image_id == image_id,
                    top.image_id if top else None,
                    top.score if top else 0,  # the local engine's score: verified matches
                    seconds,
                ]
            )
    return found


def summary(found: dict[str, list]) -> dict[str, dict]:
    out = {}
    for transform, rows in found.items():
        hits = [r for r in rows if r[0]]
        out[transform] = {
            "queries": len(rows),
            "recall_at_1": len(hits) / len(rows),
            "top_is_distractor": sum(r[1] is not None and r[1] >= DISTRACTOR_ID0 for r in rows) / len(rows),
            "top_is_other_original": sum(r[1] is not None and not r[0] and r[1] < DISTRACTOR_ID0 for r in rows)
            / len(rows),
            "nothing_found": sum(r[1] is None for r in rows) / len(rows),
            "median_matches_of_hits": float(np.median([r[2] for r in hits])) if hits else 0.0,
            "search_p50_ms": 1000 * common.percentile([r[3] for r in rows], 50),
        }
    return out


def measure(descriptor: str, n_distractors: int, flat_originals: int, patch: dict | None = None) -> dict:
    originals, distractors, query_sets = dataset(descriptor, n_distractors, patch)
    stored = originals["features"] + distractors["features"]
    result = {
        "descriptor": descriptor,
        "originals": len(originals["names"]),
        "distractors": len(distractors["names"]),
        "descriptors_stored": sum(len(f) for f in stored),
        "keypoints_per_image_mean": float(np.mean([len(f) for f in stored])),
        "extract_cpu_ms_per_image": 1000 * float(np.mean(originals["cpu_s"] + distractors["cpu_s"])),
        "extract_cpu_ms_per_original": 1000 * float(np.mean(originals["cpu_s"])),
    }
    with tempfile.TemporaryDirectory(dir=os.environ.get("LOOKALIKE_BENCH_TMP")) as tmp:
        library = Library(Path(tmp), ["local"], engine_options={"local": {"descriptor": descriptor}})
        with library:
            result["add_many_s"] = fill(library, originals, distractors)
            result["store_bytes_per_image"] = library.store.disk_bytes() / len(stored)
            if flat_originals:
                flat = search_all(library, query_sets, range(flat_originals))
                result["flat"] = summary(flat)
                result["flat_queries"] = {t: [[i, *row] for i, row in enumerate(rows)] for t, rows in flat.items()}
            started = time.perf_counter()
            library.train("local")
            result["train_s"] = time.perf_counter() - started
            trained = search_all(library, query_sets, range(len(query_sets)))
            result["trained"] = summary(trained)
            result["trained_flat_subset"] = summary({t: rows[:flat_originals] for t, rows in trained.items()})
            result["queries"] = {t: [[i, *row] for i, row in enumerate(rows)] for t, rows in trained.items()}
    return result


def recall_table(results: list[dict], key: str, label) -> str:
    headers = (
        ["transform"]
        + [f"{label(r)} recall@1" for r in results]
        + [f"{label(r)} median matches (hits)" for r in results]
    )
    rows = []
    for transform in TRANSFORMS:
        row = [transform]
        row += [f"{r[key][transform]['recall_at_1']:.2f}" for r in results]
        row += [f"{r[key][transform]['median_matches_of_hits']:.0f}" for r in results]
        rows.append(row)
    rows.append(
        ["mean"]
        + [f"{np.mean([r[key][t]['recall_at_1'] for t in TRANSFORMS]):.2f}" for r in results]
        + ["" for _ in results]
    )
    return common.table(headers, rows)


def misses_table(results: list[dict], key: str, label) -> str:
    rows = []
    for r in results:
        s = r[key]
        queries = sum(s[t]["queries"] for t in TRANSFORMS)
        miss = lambda field: sum(s[t][field] * s[t]["queries"] for t in TRANSFORMS) / queries  # noqa: E731
        times = [s[t]["search_p50_ms"] for t in TRANSFORMS]
        rows.append(
            [
                label(r),
                queries,
                f"{miss('top_is_distractor'):.3f}",
                f"{miss('top_is_other_original'):.3f}",
                f"{miss('nothing_found'):.3f}",
                f"{min(times):.0f}-{max(times):.0f}",
            ]
        )
    return common.table(
        [
            "run",
            "queries",
            "top = a distractor",
            "top = another original",
            "nothing verified",
            "search p50 ms (range over transforms)",
        ],
        rows,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="rootsift, sift and xfeat with 5,000 distractors")
    parser.add_argument("--descriptors", nargs="+")
    parser.add_argument("--distractors", type=int)
    parser.add_argument("--flat-originals", type=int, help="originals whose queries also run on the flat index")
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    if args.sweep:
        sweep()
        return
    descriptors = args.descriptors or (["rootsift", "sift", "xfeat"] if args.full else ["rootsift"])
    n = args.distractors or (5000 if args.full else 1000)
    flat = args.flat_originals if args.flat_originals is not None else 10
    results = []
    for descriptor in descriptors:
        results.append(measure(descriptor, n, flat))
        common.save_json(f"local_crop_recall_{descriptor}_{n}", results[-1])
    r0 = results[0]
    print(
        f"## Local features: crop recall@1 ({r0['originals']} originals, {r0['distractors']} distractors, "
        f"{r0['descriptors_stored']:,} descriptors stored for {r0['descriptor']})\n"
    )
    print("Trained index (OPQ+IVF+PQ, nprobe 16), every original:\n")
    print(recall_table(results, "trained", lambda r: r["descriptor"]))
    print()
    print(misses_table(results, "trained", lambda r: r["descriptor"]))
    if flat:
        print(
            f"\nFlat (exact) index before training, the first {flat} originals only; then the trained index on them:\n"
        )
        print(recall_table(results, "flat", lambda r: f"{r['descriptor']} flat"))
        print()
        print(recall_table(results, "trained_flat_subset", lambda r: f"{r['descriptor']} trained"))
        print()
        print(misses_table(results, "flat", lambda r: r["descriptor"]))
    print("\nCost per stored image:\n")
    print(
        common.table(
            [
                "descriptor",
                "keypoints/image",
                "decode+extract CPU ms/image (all / originals)",
                "store bytes/image",
                "add_many s",
                "train s",
            ],
            [
                [
                    r["descriptor"],
                    f"{r['keypoints_per_image_mean']:.0f}",
                    f"{r['extract_cpu_ms_per_image']:.0f} / {r['extract_cpu_ms_per_original']:.0f}",
                    f"{r['store_bytes_per_image']:,.0f}",
                    f"{r['add_many_s']:.1f}",
                    f"{r['train_s']:.1f}",
                ]
                for r in results
            ],
        )
    )
    print(f"\n{common.machine_markdown()}")


def sweep() -> None:
    configs = [
        {"TOTAL_KEYPOINTS": 200, "PER_QUADRANT": 50, "WORKING_SIDE": 1024},
        {"TOTAL_KEYPOINTS": 400, "PER_QUADRANT": 100, "WORKING_SIDE": 1024},
        {"TOTAL_KEYPOINTS": 200, "PER_QUADRANT": 50, "WORKING_SIDE": 1536},
        {"TOTAL_KEYPOINTS": 400, "PER_QUADRANT": 100, "WORKING_SIDE": 1536},
    ]
    results = []
    for patch in configs:
        apply_patch(patch)  # this process extracts the queries
        results.append({**measure("rootsift", 1000, 0, patch), "patch": patch})
        common.save_json("local_crop_recall_sweep", {"results": results})
    label = lambda r: f"{r['patch']['TOTAL_KEYPOINTS']} kp, {r['patch']['WORKING_SIDE']} px"  # noqa: E731
    print(
        "## Local features sweep (MONKEYPATCHED lookalike.engines.local constants; rootsift, 1,000 distractors, trained)\n"
    )
    print(recall_table(results, "trained", label))
    print()
    print(misses_table(results, "trained", label))
    print()
    print(
        common.table(
            ["config", "keypoints/image", "decode+extract CPU ms/image", "store bytes/image"],
            [
                [
                    label(r),
                    f"{r['keypoints_per_image_mean']:.0f}",
                    f"{r['extract_cpu_ms_per_image']:.0f}",
                    f"{r['store_bytes_per_image']:,.0f}",
                ]
                for r in results
            ],
        )
    )
    print(f"\n{common.machine_markdown()}")


if __name__ == "__main__":
    main()
