"""Does the color engine's small decode change its histogram? L1 to the full-resolution histogram.

lookalike computes the 8x8x8 RGB histogram on a small decode: engines.decode_for_engine(color, data)
(JPEG draft decode at 1/2..1/8 scale keeping the shorter side >= ColorHistogram.decode_side, other
formats reduced by whole factors), then ColorHistogram.extract, which nearest-neighbour downscales to
a shorter side of lookalike.engines.color.SIDE. Both are read from the engine, not hard-coded.
The reference is the same 8x8x8 binning, normalised by pixel count, over every pixel of the full
decode (lookalike.decode.decode with no min_side, no downscaling).

Reported per photo set: mean and max L1 between the two, next to the L1 between the full-resolution
histograms of *different* photos of the same set (all pairs): median and smallest.

Sets: the 46 test photos as JPEG q90 at their own size; the same at 4000x3000 (gallery size,
1/8 draft decode); the mvtb photos, as JPEG q90.

A second table splits the drift into its two causes by decoding at other minimum sides before the
same extract(): the SIDE-px nearest subsample alone (full decode) versus the JPEG draft decode, which
averages 8x8 (4x4, 2x2) pixel blocks in the DCT and so does invent in-between colours. Its ms/image
(decode + histogram, not pinned to one core) shows what a larger decode would cost.

Run: .venv/bin/python bench/color_decode_size.py
"""

import time

import numpy as np

import common
from lookalike.decode import DEFAULT_MAX_PIXELS, decode
from lookalike.engines import create_engine, decode_for_engine
from lookalike.engines.color import BINS, SIDE

ENGINE = create_engine("color")
DECODE_SIDE = ENGINE.decode_side


def full_histogram(data: bytes) -> np.ndarray:
    pixels = np.asarray(decode(data), dtype=np.uint8).reshape(-1, 3) >> 5
    bins = (pixels[:, 0].astype(np.int32) << 6) | (pixels[:, 1].astype(np.int32) << 3) | pixels[:, 2]
    return np.bincount(bins, minlength=BINS**3) / len(bins)


def compare(blobs: dict[str, bytes]) -> dict:
    small, full, sizes = [], [], []
    for data in blobs.values():
        image = decode_for_engine(ENGINE, data, DEFAULT_MAX_PIXELS)
        sizes.append(min(image.size))
        small.append(ENGINE.extract(image).astype(np.float64))
        full.append(full_histogram(data))
    small, full = np.array(small), np.array(full)
    drift = np.abs(small - full).sum(axis=1)
    i, j = np.triu_indices(len(full), 1)
    between = np.abs(full[i] - full[j]).sum(axis=1)
    names = list(blobs)
    return {
        "photos": len(blobs), "drift_mean": float(drift.mean()), "drift_max": float(drift.max()),
        "drift_max_photo": names[int(drift.argmax())], "between_median": float(np.median(between)),
        "between_min": float(between.min()), "decoded_shorter_side": [int(min(sizes)), int(max(sizes))],
    }


def main() -> None:
    test = {name: common.jpeg(image) for name, image in common.test_photos().items()}
    mvtb = {name: common.jpeg(image) for name, image in common.mvtb_photos().items()}
    sets = {
        "test photos, own size (JPEG q90)": test,
        "test photos at 4000x3000 (JPEG q90)": common.gallery_jpegs(),
    }
    if mvtb:
        sets["mvtb photos, own size (JPEG q90)"] = mvtb
    results, rows = {}, []
    for label, blobs in sets.items():
        r = results[label] = compare(blobs)
        rows.append([
            label, r["photos"], f"{r['decoded_shorter_side'][0]}-{r['decoded_shorter_side'][1]}",
            f"{r['drift_mean']:.4f}", f"{r['drift_max']:.4f} ({r['drift_max_photo']})",
            f"{r['between_median']:.3f}", f"{r['between_min']:.3f}",
        ])
    print("## Color histogram: small decode vs full resolution (L1, range 0-2)\n")
    print(common.table(
        ["photos", "n", "decoded shorter side, px", "L1 to full-res, mean", "L1 to full-res, max",
         "L1 between different photos, median", "L1 between different photos, min"],
        rows,
    ))
    print()
    rows = []
    for label, blobs in list(sets.items())[1:]:
        full = {name: full_histogram(data) for name, data in blobs.items()}
        for side in sorted({256, 512, 1024, DECODE_SIDE}) + [None]:
            started = time.perf_counter()
            drift = [np.abs(ENGINE.extract(decode(data, min_side=side)) - full[name]).sum()
                     for name, data in blobs.items()]
            ms = (time.perf_counter() - started) / len(blobs) * 1e3
            results[label][f"min_side={side}"] = {"drift_mean": float(np.mean(drift)), "drift_max": float(max(drift))}
            name = f"{side} (lookalike)" if side == DECODE_SIDE else side or "full decode"
            rows.append([label, name, f"{np.mean(drift):.4f}", f"{np.percentile(drift, 95):.4f}",
                         f"{np.max(drift):.4f}", f"{ms:.1f}"])
    print(common.table(
        ["photos", "decode min_side", "L1 to full-res, mean", "p95", "max", "ms/image"], rows
    ))
    print(f"\nThe decoded image is then nearest-neighbour downscaled to a shorter side of {SIDE} before binning. "
          f"The color engine's duplicate threshold is {ENGINE.duplicate_threshold} L1.")
    print(f"\n{common.machine_markdown()}")
    common.save_json("color_decode_size", {"results": results})


if __name__ == "__main__":
    main()
