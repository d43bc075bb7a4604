"""Point id -> image id lookups (lookalike.indexes.point_ranges.PointRanges): throughput and RAM per image.

A PointRanges gets `images` images of 100-200 points each (uniform, seeded), allocated in batches of
1,000 as PointIndex.add does when a trained index is built; then 10% of the images, chosen at
random, are released (deleted). A lookup batch is 1,000,000 point ids drawn uniformly from every
id ever allocated, so ~10% of them belong to deleted images and must come back as -1 (checked
against a dense point -> image array). Reported: lookups per CPU second of the process (median of
5 batches; one thread, numpy searchsorted), the time to
allocate all ranges and to release the 10%, and RAM: the nbytes of the arrays PointRanges holds,
per live image.

For context, on the same points: a dense numpy array point -> image (int64 per point, fancy
indexing), and, at 10,000 images only (batches of 100,000 ids), a Python dict point -> image and a
bisect per id in a Python loop.

Target: at least 1,000,000 lookups/s in batch with a few bytes of RAM per image.

Run: .venv/bin/python bench/point_lookup.py [--sizes 100000 1000000]
"""

import argparse
import bisect
import time
import tracemalloc

import numpy as np

import common
from lookalike.indexes.point_ranges import PointRanges

BATCH = 1_000_000
RUNS = 5


def build(images: int, rng: np.random.Generator) -> tuple[PointRanges, np.ndarray, float, float]:
    """(ranges, dense point -> image array with -1 for deleted, allocate seconds, release seconds)."""
    ids = rng.permutation(images * 4)[:images].astype(np.int64)  # sparse, unordered image ids
    lengths = rng.integers(100, 201, images)
    ranges = PointRanges()
    started = time.process_time()
    for i in range(0, images, 1000):
        ranges.allocate(ids[i : i + 1000], lengths[i : i + 1000])
    allocate_s = time.process_time() - started
    dense = np.repeat(ids, lengths)
    deleted = rng.choice(ids, images // 10, replace=False)
    started = time.process_time()
    released = ranges.release(deleted)
    release_s = time.process_time() - started
    for start, end in released:
        dense[start:end] = -1
    return ranges, dense, allocate_s, release_s


def rate(fn, batch: np.ndarray) -> float:
    """Lookups per second of this process's CPU time (median of RUNS): wall time lies on a shared machine."""
    seconds = []
    for _ in range(RUNS):
        started = time.process_time()
        fn(batch)
        seconds.append(time.process_time() - started)
    return len(batch) / common.median(seconds)


def naive_rows(rng: np.random.Generator) -> list[list]:
    """Python dict and bisect at 10,000 images, for scale."""
    ranges, dense, _, _ = build(10_000, rng)
    batch = rng.integers(0, len(dense), 100_000)
    tracemalloc.start()
    mapping = {p: int(i) for p, i in enumerate(dense.tolist()) if i >= 0}
    dict_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    starts, ends, owners = ranges.starts.tolist(), (ranges.starts + ranges.lengths).tolist(), ranges.image_ids.tolist()

    def by_bisect(points):
        found = []
        for p in points.tolist():
            slot = bisect.bisect_right(starts, p) - 1
            found.append(owners[slot] if slot >= 0 and p < ends[slot] else -1)
        return found

    def by_dict(points):
        return [mapping.get(p, -1) for p in points.tolist()]

    assert by_bisect(batch) == by_dict(batch) == dense[batch].tolist()
    live = len(ranges)
    return [
        ["Python dict point -> image", "10,000", f"{rate(by_dict, batch):,.0f}", f"{dict_bytes / live:,.0f}", "", ""],
        ["bisect per id (Python loop)", "10,000", f"{rate(by_bisect, batch):,.0f}", "(same 20 as PointRanges)", "", ""],
    ]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    rng = np.random.default_rng(common.SEED)
    rows, results = [], {}
    for images in args.sizes:
        ranges, dense, allocate_s, release_s = build(images, rng)
        batch = rng.integers(0, ranges.next_point, BATCH)
        assert np.array_equal(ranges.lookup(batch), dense[batch])
        per_image = sum(a.nbytes for a in ranges.arrays().values()) / len(ranges)
        lookups = rate(ranges.lookup, batch)
        dense_rate = rate(lambda points: dense[points], batch)
        results[images] = {
            "lookups_per_s": lookups,
            "bytes_per_image": per_image,
            "allocate_s": allocate_s,
            "release_s": release_s,
            "points": ranges.points,
            "dense_lookups_per_s": dense_rate,
        }
        rows.append(
            [
                "PointRanges.lookup",
                f"{images:,}",
                f"{lookups:,.0f}",
                f"{per_image:.1f}",
                f"{allocate_s:.2f}",
                f"{release_s * 1000:.0f}",
            ]
        )
        rows.append(
            [
                "dense array point -> image",
                f"{images:,}",
                f"{dense_rate:,.0f}",
                f"{dense.nbytes / len(ranges):,.0f}",
                "",
                "",
            ]
        )
    rows += naive_rows(rng)
    print(
        f"## Point -> image lookups (batches of {BATCH:,} random point ids, ~10% of them deleted; median of {RUNS})\n"
    )
    print(
        common.table(
            [
                "method",
                "images",
                "lookups per CPU s",
                "RAM bytes/live image",
                "allocate CPU s (batches of 1,000)",
                "release 10% CPU ms",
            ],
            rows,
        )
    )
    print(f"\n{common.machine_markdown()}")
    common.save_json("point_lookup", {"results": results})


if __name__ == "__main__":
    main()
