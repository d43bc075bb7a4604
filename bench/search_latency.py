"""Search latency (p50/p99) and index memory of lookalike.indexes.vectors.VectorIndex at 100k and 1M images.

Features are generated, not extracted (seeded):
  phash: uniformly random 576-bit hashes (72 random bytes each).
  color: 512-bin histograms with bin weights U**8, U ~ uniform(0, 1), normalised to sum 1; a
         Dirichlet-like histogram (U**(1/a) is the small-a shape of a Gamma(a) draw, a = 1/8): on
         average the top 10% of bins hold ~60% of the mass; two random ones are ~1.6 apart (L1).
Each query is a stored feature made near-duplicate (phash: 20 random bits flipped; color: mixed
2.5% with another histogram, L1 <= 0.05) so threshold searches find something:
  phash: 2 variants stacked (the near-duplicate + a random hash standing in for its mirror), k=10;
  color: 1 variant, k=10.
"within" is a threshold search, search(query, threshold=...), at the engines' duplicate thresholds: 64
bits for phash, 0.1 L1 for color; k=10 is search(query, k=10). The index is built on the features in
memory (common.ArraySource), not on an LMDB store: a flat index never reads them back.
Memory: psutil RSS of this process after VectorIndex(IndexSetup(source, None)).add(ids, features), minus before.
Also timed: remove() of one id, which Library pays on delete and when re-indexing a changed file
(a bulk add of new images removes nothing).
FAISS runs with its default threads (all cores); phash at 1M is repeated with 1 OpenMP thread.

Target: phash at 1M, k=10 with the mirror variant, under 20 ms p50.

Run: .venv/bin/python bench/search_latency.py [--queries 200]
"""

import argparse
import gc
import time

import faiss
import numpy as np
import psutil

import common
from lookalike.engines import create_engine
from lookalike.indexes import IndexSetup
from lookalike.indexes.vectors import VectorIndex

SIZES = [100_000, 1_000_000]
THRESHOLDS = {"phash": 64, "color": 0.1}
DEFAULT_THREADS = faiss.omp_get_max_threads()


def generate(engine: str, n: int, rng: np.random.Generator) -> np.ndarray:
    if engine == "phash":
        return rng.integers(0, 256, (n, 72), dtype=np.uint8)
    features = np.empty((n, 512), np.float32)
    for start in range(0, n, 100_000):
        chunk = features[start : start + 100_000]
        rng.random(out=chunk, dtype=np.float32)
        chunk **= 8
        chunk /= chunk.sum(axis=1, keepdims=True)
    return features


def make_query(engine: str, features: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    stored = features[rng.integers(len(features))]
    if engine == "phash":
        bits = np.unpackbits(stored)
        bits[rng.choice(576, 20, replace=False)] ^= 1
        mirror = rng.integers(0, 256, 72, dtype=np.uint8)
        return np.stack([np.packbits(bits), mirror])
    other = features[rng.integers(len(features))]
    return (0.975 * stored + 0.025 * other)[None]


def latencies(fn, queries) -> list[float]:
    for query in queries[:3]:  # warm-up
        fn(query)
    seconds = []
    for query in queries:
        started = time.perf_counter()
        fn(query)
        seconds.append(time.perf_counter() - started)
    return seconds


def measure(engine: str, features: np.ndarray, n: int, queries_count: int, rng, threads: list[int]) -> list[dict]:
    spec = create_engine(engine).spec
    gc.collect()
    process = psutil.Process()
    before = process.memory_info().rss
    index = VectorIndex(IndexSetup(common.ArraySource(spec, features[:n]), None))  # never saved: no files
    add_seconds, _ = common.timed(index.add, np.arange(n, dtype=np.int64), features[:n])
    memory = process.memory_info().rss - before
    queries = [make_query(engine, features[:n], rng) for _ in range(queries_count)]
    results = []
    for count in threads:
        faiss.omp_set_num_threads(count)
        threshold = THRESHOLDS[engine]
        knn = latencies(lambda q: index.search(q, k=10), queries)
        within = latencies(lambda q: index.search(q, threshold=threshold), queries[: max(queries_count // 4, 10)])
        found = float(np.mean([len(index.search(q, threshold=threshold)) for q in queries[:10]]))
        results.append({
            "engine": engine, "n": n, "threads": count, "queries": len(queries),
            "knn_p50_ms": common.percentile(knn, 50) * 1e3, "knn_p99_ms": common.percentile(knn, 99) * 1e3,
            "within_p50_ms": common.percentile(within, 50) * 1e3, "within_p99_ms": common.percentile(within, 99) * 1e3,
            "within_found": found, "rss_mb": memory / 2**20, "raw_mb": features[:n].nbytes / 2**20,
            "add_s": add_seconds,
        })
    faiss.omp_set_num_threads(DEFAULT_THREADS)
    remove_seconds, _ = common.timed(index.remove, [n // 2])
    for result in results:
        result["remove_ms"] = remove_seconds * 1e3
    del index
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200, help="k-NN queries per phash case; color uses 1/4")
    args = parser.parse_args()
    default_threads = DEFAULT_THREADS
    rng = np.random.default_rng(common.SEED)
    rows, results = [], []
    for engine in ["phash", "color"]:
        started = time.perf_counter()
        features = generate(engine, SIZES[-1], rng)
        generated = time.perf_counter() - started
        queries = args.queries if engine == "phash" else max(args.queries // 4, 20)
        for n in SIZES:
            threads = [default_threads]
            if engine == "phash" and n == SIZES[-1] and default_threads > 1:
                threads.append(1)  # does OpenMP help a 2-query search?
            for r in measure(engine, features, n, queries, rng, threads):
                results.append({**r, "generate_s": generated})
                rows.append([
                    engine, f"{n:,}", r["threads"], r["queries"], f"{r['knn_p50_ms']:.2f}", f"{r['knn_p99_ms']:.2f}",
                    f"{r['within_p50_ms']:.2f}", f"{r['within_p99_ms']:.2f}", f"{r['within_found']:.1f}",
                    f"{r['rss_mb']:.0f} ({r['raw_mb']:.0f})", f"{r['remove_ms']:.1f}",
                ])
        del features
        gc.collect()

    target = next(r for r in results if (r["engine"], r["n"], r["threads"]) == ("phash", SIZES[-1], default_threads))
    print(f"## Search latency, VectorIndex (flat), FAISS {faiss.__version__}, default threads = {default_threads}\n")
    print(common.table(
        ["engine", "images", "FAISS threads", "queries", "k=10 p50 ms", "k=10 p99 ms",
         "within p50 ms", "within p99 ms", "found within", "index RSS MiB (raw features MiB)", "remove 1 id, ms"],
        rows,
    ))
    print(f"\nphash k=10 queries carry 2 variants (image + mirror); color 1. within = threshold search at "
          f"{THRESHOLDS['phash']} bits (phash) / {THRESHOLDS['color']} L1 (color), queries are 1/4 of the k-NN ones "
          f"(at least 10). Target phash at 1M under 20 ms p50: "
          f"{'met' if target['knn_p50_ms'] < 20 else 'MISSED'} ({target['knn_p50_ms']:.1f} ms).")
    print(f"\n{common.machine_markdown()}")
    common.save_json("search_latency", {"results": results})


if __name__ == "__main__":
    main()
