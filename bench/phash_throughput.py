"""phash throughput on gallery-sized photos, one core: JPEG bytes -> 576-bit hash, images/s.

The 46 test photos (scikit-image's 7 + the 39 interior photos) are resized to 4000x3000 (3000x4000
for portrait) and re-encoded as JPEG quality 90. Three pipelines run over the same bytes, in the
same process, pinned to one CPU with OMP/OPENBLAS/MKL threads set to 1:

  (a) lookalike: engines.decode_for_engine(phash, data, max_pixels) then engine.extract(image)
      (JPEG draft decode at 1/2..1/8 scale, then grey, 96x96 Lanczos, two 24x96 DCT products);
  (b) the plain reference: full PIL decode, ImageOps.exif_transpose, convert("L"),
      resize((96, 96), LANCZOS), scipy.fft.dct type 2 on axis 0 then 1, top-left 24x24 > median,
      np.packbits;
  (c) imagehash.phash(Image.open(...), hash_size=24, highfreq_factor=4): the same recipe as (b)
      but no EXIF transpose, scipy.fftpack, and an ImageHash object (bool matrix) as the result.

Also: the Hamming distance between (a) and (b), and between (c) and (b), per photo.
Target: (a) >= 4x (b).

Run: .venv/bin/python bench/phash_throughput.py [--rounds N]
"""

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = "1"

import argparse  # noqa: E402
import io  # noqa: E402
import time  # noqa: E402

import imagehash  # noqa: E402
import numpy as np  # noqa: E402
import scipy.fft  # noqa: E402
from PIL import Image, ImageOps  # noqa: E402

import common  # noqa: E402
from lookalike.decode import DEFAULT_MAX_PIXELS  # noqa: E402
from lookalike.engines import create_engine, decode_for_engine  # noqa: E402

ENGINE = create_engine("phash")


def lookalike_hash(data: bytes) -> tuple[np.ndarray, float]:
    """(hash, seconds spent decoding)"""
    started = time.perf_counter()
    image = decode_for_engine(ENGINE, data, DEFAULT_MAX_PIXELS)
    decoded = time.perf_counter()
    return ENGINE.extract(image), decoded - started


def reference_hash(data: bytes) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    image = Image.open(io.BytesIO(data))
    image.load()
    decoded = time.perf_counter()
    image = ImageOps.exif_transpose(image).convert("L").resize((96, 96), Image.Resampling.LANCZOS)
    coefficients = scipy.fft.dct(scipy.fft.dct(np.asarray(image, np.float64), type=2, axis=0), type=2, axis=1)
    block = coefficients[:24, :24]
    return np.packbits(block > np.median(block)), decoded - started


def imagehash_hash(data: bytes) -> tuple[np.ndarray, float]:
    result = imagehash.phash(Image.open(io.BytesIO(data)), hash_size=24, highfreq_factor=4)
    return np.packbits(result.hash.ravel()), float("nan")  # decode is not separable here


PIPELINES = {
    "(a) lookalike decode_for + extract": lookalike_hash,
    "(b) reference: full decode + scipy.fft.dct": reference_hash,
    "(c) imagehash.phash(hash_size=24)": imagehash_hash,
}


def hamming(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.unpackbits(a ^ b).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="passes over all photos per pipeline")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    photos = common.gallery_jpegs()
    names, blobs = list(photos), list(photos.values())
    megapixels = np.mean([np.prod(Image.open(io.BytesIO(b)).size) for b in blobs]) / 1e6
    for fn in PIPELINES.values():  # warm-up: imports, FFT plans, caches
        fn(blobs[0])

    total = {label: 0.0 for label in PIPELINES}
    decode = {label: 0.0 for label in PIPELINES}
    hashes = {label: [] for label in PIPELINES}
    for round_ in range(args.rounds):  # interleaved by round, so drift hits every pipeline alike
        for label, fn in PIPELINES.items():
            for data in blobs:
                started = time.perf_counter()
                digest, decode_seconds = fn(data)
                total[label] += time.perf_counter() - started
                decode[label] += decode_seconds
                if round_ == 0:
                    hashes[label].append(digest)

    count = args.rounds * len(blobs)
    reference = "(b) reference: full decode + scipy.fft.dct"
    rows, results = [], {}
    for label in PIPELINES:
        rate = count / total[label]
        decode_ms = decode[label] / count * 1e3
        rows.append([
            label, f"{rate:.1f}", f"{total[label] / count * 1e3:.1f}",
            "-" if np.isnan(decode_ms) else f"{decode_ms:.1f}", f"{rate / (count / total[reference]):.2f}x",
        ])
        results[label] = {"images_per_s": rate, "ms_per_image": total[label] / count * 1e3, "decode_ms": decode_ms}
    a_vs_b = [hamming(x, y) for x, y in zip(hashes["(a) lookalike decode_for + extract"], hashes[reference])]
    c_vs_b = [hamming(x, y) for x, y in zip(hashes["(c) imagehash.phash(hash_size=24)"], hashes[reference])]
    speedup = results["(a) lookalike decode_for + extract"]["images_per_s"] / results[reference]["images_per_s"]

    print(f"## phash throughput, one core ({len(blobs)} photos at 4000x3000 JPEG q90, "
          f"mean {megapixels:.1f} MP, {args.rounds} rounds)\n")
    print(common.table(["pipeline", "images/s", "ms/image", "of which decode, ms", "vs (b)"], rows))
    print()
    print(common.table(
        ["hash agreement (576 bits)", "max Hamming", "mean Hamming", "photos with distance 0"],
        [["(a) lookalike vs (b) reference", max(a_vs_b), f"{np.mean(a_vs_b):.1f}", sum(d == 0 for d in a_vs_b)],
         ["(c) imagehash vs (b) reference", max(c_vs_b), f"{np.mean(c_vs_b):.1f}", sum(d == 0 for d in c_vs_b)]],
    ))
    worst = names[int(np.argmax(a_vs_b))]
    print(f"\nLargest (a)-(b) distance: {worst}. "
          f"Target (a) >= 4x (b): {'met' if speedup >= 4 else 'MISSED'} ({speedup:.1f}x).")
    print(f"\n{common.machine_markdown()}")
    common.save_json("phash_throughput", {
        "photos": len(blobs), "rounds": args.rounds, "results": results, "speedup": speedup,
        "hamming_a_b": dict(zip(names, a_vs_b)), "hamming_c_b": dict(zip(names, c_vs_b)),
    })


if __name__ == "__main__":
    main()
