"""Fused reverse search latency against each engine alone, in the same run, on the same queries.

Library: every default engine, from copy_features.py's cached features: the originals and the
distractors of copy_corpus.py, and then the distractors again under new ids until SIZE images (their
features repeated: the index and store hold SIZE images; the local index trained as `maintain`
does). Queries: QUERIES transformed copies (seeded) as JPEG bytes. Per query, in turn: each engine
alone (`similar_to_image(engine, bytes, k=200)`: decode, that engine's query variants, its search)
and the fused search (`gateway.reverse_search(library, bytes, 20)`: one decode, the engines whose
evidence weighs something side by side on the library's thread pool, the fusion), and the same asked
of every engine (`every_engine=True`, as the original gateway's route asks). One warm-up round
first; wall-clock ms.

Run: .venv/bin/python bench/fused_latency.py --size 10000
"""

import argparse
import itertools
import random
import tempfile
import time
from pathlib import Path

import common
import copy_corpus as corpus
import copy_features as features
import numpy as np

from lookalike.fusion import PER_ENGINE
from lookalike.gateway import reverse_search
from lookalike.library import Library
from lookalike.store import ImageRecord

QUERIES = 40


def build(folder: Path, size: int) -> Library:
    library = Library(folder, features.ENGINES, max_pixels=features.MAX_PIXELS)
    stored = features.load("stored", corpus.stored_images())
    originals = len(corpus.originals()[0])
    repeated = itertools.chain(stored, itertools.cycle(stored[originals:]))
    batch = []
    for image_id, feature in zip(range(size), repeated):
        batch.append((ImageRecord(image_id, f"image {image_id}"), feature))
        if len(batch) == 500:
            library.add_many(batch)
            batch = []
    library.add_many(batch)
    library.maintain()
    return library


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=10_000)
    args = parser.parse_args()
    rng = random.Random(common.SEED)
    pairs = rng.sample(features.query_pairs(), QUERIES)
    queries = [corpus.query(original, transform) for original, transform in pairs]
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        library = build(Path(tmp), args.size)
        print(f"built {library.store.count()} images in {time.monotonic() - started:.0f} s", flush=True)
        columns = {name: [] for name in library.engines} | {"fused": [], "fused, every engine": []}
        for round_ in range(2):
            for data in queries:
                for name in library.engines:
                    started = time.perf_counter()
                    library.similar_to_image(name, data, PER_ENGINE)
                    if round_:
                        columns[name].append(1000 * (time.perf_counter() - started))
                for column, every_engine in (("fused", False), ("fused, every engine", True)):
                    started = time.perf_counter()
                    reverse_search(library, data, 20, every_engine=every_engine)
                    if round_:
                        columns[column].append(1000 * (time.perf_counter() - started))
        library.close()
    slowest = max((n for n in columns if not n.startswith("fused")), key=lambda n: np.median(columns[n]))
    rows = [
        [
            name,
            f"{np.median(ms):.0f}",
            f"{np.percentile(ms, 99):.0f}",
            f"{np.median(ms) / np.median(columns[slowest]):.2f}",
        ]
        for name, ms in columns.items()
    ]
    print(f"\n## Fused search latency ({args.size} images, {QUERIES} queries; slowest engine alone: {slowest})\n")
    print(common.table(["search", "p50 ms", "p99 ms", "p50 / slowest engine's p50"], rows))
    print(f"\n{common.machine_markdown()}")


if __name__ == "__main__":
    main()
