"""Local features engine: search latency, RAM and disk at 10k and 100k images, through a real Library.

Images: the rootsift features of local_crop_recall.py (its cache: 149 real originals and 5,000
distractors with --full, else 1,000, extracted through the real path), then synthetic images up to the size: each a copy of
a real image (taken in turn) with every descriptor component moved by uniform noise in -NOISE..NOISE
(clipped to uint8) and every keypoint jittered by up to 2 px. The copies are near-duplicates of
their source, so each real original has ~19 copies at 100k that vote and verify: a pessimistic load
for the verification step. All of it goes through Library.add_many (batches of 1,000) into a real
LMDB store under a temp dir, then library.train("local") (timed), then the library is
closed (the index is saved) and opened in a fresh process: the RSS growth of that open is the
index's RAM; the index file and store.disk_bytes() its disk.

Queries: real crop JPEGs from local_crop_recall.py (crops keeping 25% and 10% of the area of the
originals), library.similar_to_image("local", jpeg, k=10), end to end, one at a time, FAISS with 2
threads; the 25% crops also with mirrored=True. The split comes from timing wrappers put on the
library's own objects (nothing in src changes): decode (library.decode), extraction
(engine.query_variants), ANN + vote (PointIndex._candidates), LMDB fetch of the candidates'
features (the index setup's source.read), and verification (the setup's verify, engine.verify).
"found" is the share whose top result is the original or one of its synthetic copies. nprobe 16 is
the default; 8 and 32 reopen the library with Library(..., nprobe=N), the same saved index.

Indexing time per image is local_crop_recall.py's extraction (decode + extract, JPEG q90 in), CPU
time per image in one process, and images/s of its pool of 2 processes.

Target: p50 under 1 s at 100k images.

Run: .venv/bin/python bench/local_search_latency.py          # quick: 10k images
     .venv/bin/python bench/local_search_latency.py --full   # 10k and 100k images
(LOOKALIKE_BENCH_TMP=DIR puts the ~3 GB library elsewhere than /tmp.)
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from functools import wraps
from pathlib import Path
from types import SimpleNamespace

import numpy as np

import common
import local_crop_recall as recall
from lookalike.features import Keypoints
from lookalike.library import Library
from lookalike.store import ImageRecord

NOISE = 6
SYNTHETIC_ID0 = 10_000_000
SPLIT = ["decode", "extract", "ann+vote", "fetch", "verify"]


def synthetic(base: list[Keypoints], count: int, rng: np.random.Generator):
    """Batches of (ImageRecord, features) for `count` noisy copies of the base images, in turn."""
    for first in range(0, count, 1000):
        items = []
        for j in range(first, min(count, first + 1000)):
            source = base[j % len(base)]
            noise = rng.integers(-NOISE, NOISE + 1, source.descriptors.shape, dtype=np.int16)
            descriptors = np.clip(source.descriptors.astype(np.int16) + noise, 0, 255).astype(np.uint8)
            xy = source.xy + rng.uniform(-2, 2, source.xy.shape).astype(np.float32)
            items.append((ImageRecord(SYNTHETIC_ID0 + j, f"synthetic-{j}"), {"local": Keypoints(xy, descriptors)}))
        yield items


def instrument(library: Library, spent: dict[str, float]) -> None:
    """Timing wrappers on this library's objects; `spent` accumulates seconds per step."""

    def timed(name, fn):
        @wraps(fn)
        def wrapper(*args, **kwargs):
            started = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - started

        return wrapper

    index = library.indexes["local"]
    library.decode = timed("decode", library.decode)
    engine = library.engines["local"]
    engine.query_variants = timed("extract", engine.query_variants)
    index._candidates = timed("ann+vote", index._candidates)
    # The index reads and verifies its candidates through its (frozen) setup: give it a copy whose
    # source and verify are timed.
    source = index.setup.source
    timed_source = SimpleNamespace(
        spec=source.spec, read=timed("fetch", source.read), ids=source.ids, count=source.count
    )
    index.setup = replace(index.setup, source=timed_source, verify=timed("verify", index.setup.verify))


def run_queries(library: Library, spent: dict, queries: list[tuple[int, bytes]], mirrored: bool, copies_of) -> dict:
    for _, data in queries[:3]:  # warm-up
        library.similar_to_image("local", data, k=10, mirrored=mirrored)
    totals, steps, found = [], {name: [] for name in SPLIT}, 0
    for original, data in queries:
        before = dict(spent)
        started = time.perf_counter()
        matches = library.similar_to_image("local", data, k=10, mirrored=mirrored)
        totals.append(time.perf_counter() - started)
        for name in SPLIT:
            steps[name].append(spent[name] - before[name])
        found += bool(matches) and copies_of(matches[0].image_id) == original
    return {
        "p50_ms": 1000 * common.percentile(totals, 50),
        "p99_ms": 1000 * common.percentile(totals, 99),
        "split_p50_ms": {name: 1000 * common.percentile(v, 50) for name, v in steps.items()},
        "found": found / len(queries),
    }


def reopen_rss(folder: Path) -> int:
    """RSS growth of a fresh process opening the library: the loaded index (LMDB pages stay unread)."""
    code = (
        "import sys, psutil; from pathlib import Path; from lookalike.library import Library; "
        "before = psutil.Process().memory_info().rss; library = Library(Path(sys.argv[1]), ['local']); "
        "print(psutil.Process().memory_info().rss - before); library.close()"
    )
    done = subprocess.run([sys.executable, "-c", code, str(folder)], capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1])


def measure(size: int, base: list[Keypoints], base_ids: list[int], names: list[str], queries: dict, tmp: Path) -> dict:
    rng = np.random.default_rng(common.SEED)
    folder = Path(tempfile.mkdtemp(dir=tmp))
    result: dict = {"images": size}
    try:
        with Library(folder, ["local"]) as library:
            started = time.perf_counter()
            real = [(ImageRecord(i, n), {"local": f}) for i, n, f in zip(base_ids, names, base)][:size]
            for i in range(0, len(real), 1000):
                library.add_many(real[i : i + 1000])
            for items in synthetic(base, size - len(real), rng):
                library.add_many(items)
            result["add_many_s"] = time.perf_counter() - started
            started = time.perf_counter()
            library.train("local")
            result["train_s"] = time.perf_counter() - started
            result["points"] = library.indexes["local"].points
        result["index_rss_bytes"] = reopen_rss(folder)
        to_base = {SYNTHETIC_ID0 + j: base_ids[j % len(base)] for j in range(size - min(size, len(base)))}
        copies_of = lambda image_id: to_base.get(image_id, image_id)  # noqa: E731
        result["runs"] = {}
        spent = {name: 0.0 for name in SPLIT}
        # nprobe is fixed when an index is opened: each value reopens the library on the same saved index.
        for nprobe in (16, 8, 32):
            started = time.perf_counter()
            library = Library(folder, ["local"], nprobe=nprobe)
            if nprobe == 16:
                result["open_s"] = time.perf_counter() - started
            with library:
                if nprobe == 16:
                    result["store_bytes"] = library.store.disk_bytes()
                    result["index_file_bytes"] = (folder / "indexes" / "local.faiss").stat().st_size
                    result["trained_points"] = library.indexes["local"].trained_points
                instrument(library, spent)
                for label, chosen, mirrored in [
                    ("crop-25%", queries["crop-25%"], False),
                    ("crop-10%", queries["crop-10%"], False),
                    ("crop-25%, mirrored=True", queries["crop-25%"], True),
                ]:
                    if nprobe != 16 and label != "crop-25%":
                        continue
                    result["runs"][f"{label}|{nprobe}"] = run_queries(library, spent, chosen, mirrored, copies_of)
    finally:
        shutil.rmtree(folder)
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", action="store_true", help="10k and 100k images, 5,000 real distractors")
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--queries", type=int, default=60, help="originals queried per transform")
    args = parser.parse_args()
    sizes = args.sizes or ([10_000, 100_000] if args.full else [10_000])
    originals, distractors, query_sets = recall.dataset("rootsift", 5000 if args.full else 1000)
    base = originals["features"] + distractors["features"]
    base_ids = list(range(len(originals["features"]))) + [
        recall.DISTRACTOR_ID0 + i for i in range(len(distractors["features"]))
    ]
    names = originals["names"] + distractors["names"]
    step = max(1, len(query_sets) // args.queries)
    chosen = list(range(0, len(query_sets), step))[: args.queries]
    queries = {t: [(i, query_sets[i][t]) for i in chosen] for t in ("crop-25%", "crop-10%")}
    tmp = Path(os.environ.get("LOOKALIKE_BENCH_TMP", tempfile.gettempdir()))
    need = max(sizes) * 30_000
    if shutil.disk_usage(tmp).free < 2 * need:
        raise SystemExit(f"{tmp} has {shutil.disk_usage(tmp).free / 2**30:.1f} GiB free; want {2 * need / 2**30:.1f}")
    results = [measure(size, base, base_ids, names, queries, tmp) for size in sizes]
    common.save_json("local_search_latency", {"results": results})

    print(f"## Local features: search latency (rootsift, {len(chosen)} queries per row, k=10, FAISS 2 threads)\n")
    rows = []
    for r in results:
        for key, run in r["runs"].items():
            label, nprobe = key.split("|")
            split = " / ".join(f"{run['split_p50_ms'][s]:.0f}" for s in SPLIT)
            rows.append(
                [
                    f"{r['images']:,}",
                    label,
                    nprobe,
                    f"{run['p50_ms']:.0f}",
                    f"{run['p99_ms']:.0f}",
                    split,
                    f"{run['found']:.2f}",
                ]
            )
    print(
        common.table(
            [
                "images",
                "queries",
                "nprobe",
                "p50 ms",
                "p99 ms",
                "p50 ms: " + " / ".join(SPLIT),
                "top = original or its copy",
            ],
            rows,
        )
    )
    print("\nSize and build time:\n")
    print(
        common.table(
            [
                "images",
                "descriptors",
                "index RAM (RSS of a fresh open) bytes/image",
                "index file bytes/image",
                "store bytes/image",
                "add_many s",
                "train s",
                "reopen s",
            ],
            [
                [
                    f"{r['images']:,}",
                    f"{r['points']:,}",
                    f"{r['index_rss_bytes'] / r['images']:,.0f}",
                    f"{r['index_file_bytes'] / r['images']:,.0f}",
                    f"{r['store_bytes'] / r['images']:,.0f}",
                    f"{r['add_many_s']:.0f}",
                    f"{r['train_s']:.0f}",
                    f"{r['open_s']:.1f}",
                ]
                for r in results
            ],
        )
    )
    images = len(base)
    cpu = 1000 * np.mean(originals["cpu_s"] + distractors["cpu_s"])
    wall = originals["wall_s"] + distractors["wall_s"]
    print(
        f"\nIndexing (decode + extract, local_crop_recall's {images:,} images): {cpu:.0f} ms CPU per image in one "
        f"process; {images / wall:.1f} images/s with 2 processes (the originals alone: "
        f"{1000 * np.mean(originals['cpu_s']):.0f} ms per image)."
    )
    print(f"\n{common.machine_markdown()}")


if __name__ == "__main__":
    main()
