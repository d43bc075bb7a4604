"""Global features: search latency, memory and recall at 100k and 1M vectors, flat vs whitened vs IVF-PQ.

Vectors (1280-d, EfficientNet-Lite2): the real global features of global_retrieval.py (the 149 real
photos and its 2,000 distractors: 2,149 real vectors, cached), then synthetic copies up to the size.
A copy mixes a real vector with another one, (1 - t) x_i + t x_j with t ~ U(0, 0.3), multiplies
every component by exp(s g) with g ~ N(0, 1) and s ~ U(0.2, 0.5) per copy, and is renormalised.
The features are non-negative and sparse (ReLU6 activations); the multiplicative noise keeps that.
A copy ends up ~0.02-0.15 (cosine distance) from its source, the range of the distance from a real
photo to its nearest other photo here (median 0.13), so the data is not a few thousand tight clusters.
Queries: 200 held-out copies made the same way (never added).

Indexes, all lookalike.indexes.vectors.VectorIndex with the engine's spec, built on the vectors in
memory (common.ArraySource, not an LMDB store); every timing with FAISS's default
threads (all cores) and again with faiss.omp_set_num_threads(1) (on a busy machine, OpenMP threads
waiting for a descheduled sibling cost milliseconds per query):
- flat: the default (IndexIDMap2 over IndexFlatIP);
- flat + whitening: train_template(spec, vectors, 512, compressed=False) (PCA whitening to 512 dims,
  then renormalised; what Library.train(engine, whiten=True) builds);
- compressed: train_template(spec, vectors, None, compressed=True): IVF (sqrt(n) lists) + PQ (160
  codes of 8 bits), searched with nprobe 16 (Library's default) and 64 (IndexSetup's nprobe);
- whitened + compressed: train_template(spec, vectors, 512, True): 512 dims, 128 codes of 8 bits.
Every template is trained on all the vectors, as Library.train does. Latency: single queries,
k=10, VectorIndex.search (one vector, as similar_to_id; and for flat and compressed also the 3
variants similar_to_image searches with: the photo and it turned by 90 degrees either way, here 3
held-out copies), after 3 warm-up queries; --timed of the 200 queries are timed. Recall@10:
|top 10 ∩ exact top 10| / 10 over the 200 queries, the exact top 10 computed with numpy in the
index's own space (raw vectors; for whitened indexes the vectors through the template's own
transforms); also the overlap with the plain exact top 10. Each (size, index) runs in a fresh
process (the vectors regenerated, seeded): memory is its psutil RSS after add minus before training
(the vectors array excluded), beside the size of the index as written by faiss.write_index.
Training time: train_template alone; "add" is VectorIndex.add of all the vectors. A compressed
VectorIndex re-scores its top 100 (vectors.RERANK) by the exact inner product of the stored vectors,
here read from memory: the timed searches include that. The recall columns are FAISS's own top 10
(index._index.search), and, for the compressed indexes, its top 100 re-ranked exactly as that re-scoring
does.

Query expansion: QueryExpansion(3, 3.0) with lookalike's own Library._expanded (the search for the 3
neighbours, reading their vectors, the weighted sum) on a stand-in for the Library whose store
reads the vectors from memory rather than LMDB; then the search with the expanded query.

Run: LOOKALIKE_MODELS_DIR=/tmp/lk-models .venv/bin/python bench/global_search_latency.py  # 100k
     .venv/bin/python bench/global_search_latency.py --full                               # 100k and 1M
     [--sizes N ...] [--indexes flat ...] [--timed 100]
(1M needs ~11 GiB of free RAM for flat: the vectors and the index are 4.8 GiB each.)
"""

import argparse
import gc
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import common
import faiss
import global_retrieval
import numpy as np
import psutil

from lookalike.engines import create_engine
from lookalike.indexes import IndexSetup
from lookalike.indexes.templates import train_template
from lookalike.indexes.vectors import VectorIndex
from lookalike.library import Library, QueryExpansion

QUERIES = 200
CHUNK = 50_000
EXPANSION = QueryExpansion(3, 3.0)
DEFAULT_THREADS = faiss.omp_get_max_threads()


def copies(base: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    found = np.empty((count, base.shape[1]), np.float32)
    for start in range(0, count, CHUNK):
        n = min(CHUNK, count - start)
        i, j = rng.integers(0, len(base), n), rng.integers(0, len(base), n)
        t = rng.uniform(0, 0.3, (n, 1)).astype(np.float32)
        s = rng.uniform(0.2, 0.5, (n, 1)).astype(np.float32)
        mixed = (1 - t) * base[i] + t * base[j]
        mixed *= np.exp(s * rng.standard_normal(mixed.shape, np.float32))
        mixed /= np.linalg.norm(mixed, axis=1, keepdims=True)
        found[start : start + n] = mixed
    return found


def latencies(fn, queries) -> list[float]:
    for query in queries[:3]:
        fn(query)
    found = []
    for query in queries:
        started = time.perf_counter()
        fn(query)
        found.append(time.perf_counter() - started)
    return found


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = 10) -> np.ndarray:
    """The exact top k by inner product (numpy, in chunks): ids (n, k)."""
    sims, ids = [], []
    for start in range(0, len(vectors), CHUNK):
        chunk = queries @ vectors[start : start + CHUNK].T
        keep = np.argpartition(-chunk, k - 1, axis=1)[:, :k]
        sims.append(np.take_along_axis(chunk, keep, 1))
        ids.append(keep + start)
    sims, ids = np.hstack(sims), np.hstack(ids)
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(ids, order, 1)


def whitened(template, rows: np.ndarray) -> np.ndarray:
    """`rows` through a template's transforms (PCA whitening, renormalisation), in chunks."""
    chain = template.index.chain
    found = []
    for start in range(0, len(rows), CHUNK):
        out = np.ascontiguousarray(rows[start : start + CHUNK])
        for i in range(chain.size()):
            out = faiss.downcast_VectorTransform(chain.at(i)).apply(out)
        found.append(out)
    return np.vstack(found)


def recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(found, exact)]))


def expander(spec, index: VectorIndex, vectors: np.ndarray):
    """Library._expanded bound to a stand-in library: `index`, and a store reading `vectors` in memory."""

    def read_features(engine, ids):
        ids = np.asarray(ids, np.int64)
        return ids, vectors[ids]

    stand_in = SimpleNamespace(
        engines={"global": SimpleNamespace(spec=spec)},
        indexes={"global": index},
        store=SimpleNamespace(read_features=read_features),
    )
    return lambda query: Library._expanded(stand_in, "global", query, EXPANSION)


INDEXES = {
    # name: (whitened_dims, compressed, nprobes, timed with 3 variants and expansion)
    "flat": (None, False, [None], True),
    "flat + whitening (512)": (512, False, [None], False),
    "compressed IVF-PQ": (None, True, [16, 64], True),
    "whitened (512) + compressed": (512, True, [16, 64], False),
}


def dataset(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors, queries, query variants (n, 3, dim)): seeded, the same in every process."""
    _, originals = global_retrieval.originals()
    _, distractors = global_retrieval.distractors(2000)
    base = np.vstack([originals, distractors])
    vectors = np.empty((size, base.shape[1]), np.float32)
    vectors[: len(base)] = base
    vectors[len(base) :] = copies(base, size - len(base), np.random.default_rng(common.SEED))
    queries = copies(base, QUERIES, np.random.default_rng(common.SEED + 1))
    variants = copies(base, 3 * QUERIES, np.random.default_rng(common.SEED + 2)).reshape(QUERIES, 3, -1)
    return vectors, queries, variants


def measure(size: int, name: str, timed: int) -> list[dict]:
    """One index at one size, in this (fresh) process."""
    dims, compressed, nprobes, full = INDEXES[name]
    spec = create_engine("global", {"models_dir": global_retrieval.models_dir()}).spec
    vectors, queries, variants = dataset(size)
    flat_top = exact_top(vectors, queries)
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    started = time.perf_counter()
    template = train_template(spec, vectors, dims, compressed) if dims or compressed else None
    train_s = time.perf_counter() - started
    setup = IndexSetup(common.ArraySource(spec, vectors), None)  # never saved: no files
    index = VectorIndex(setup, template=template)
    started = time.perf_counter()
    index.add(np.arange(len(vectors)), vectors)
    add_s = time.perf_counter() - started
    rss = process.memory_info().rss - before
    with tempfile.TemporaryDirectory() as tmp:
        faiss.write_index(index._index, str(Path(tmp, "index")))
        file_bytes = Path(tmp, "index").stat().st_size
    own_vectors, own_queries = (
        (whitened(template, vectors), whitened(template, queries)) if dims else (vectors, queries)
    )
    own_top = exact_top(own_vectors, own_queries) if dims else flat_top
    rows = []
    for nprobe in nprobes:
        if nprobe:
            # nprobe comes from the setup: the same trained FAISS index, wrapped again with another one.
            index = VectorIndex(replace(setup, nprobe=nprobe), index._index, template)
        found = index._index.search(queries, 10)[1]  # one batch: the same top 10 as one search per query
        reranked = None
        if compressed:  # as VectorIndex re-scores: the top 100 re-ranked by the exact inner product of stored vectors
            top100 = index._index.search(queries, 100)[1]
            exact = np.einsum("qkd,qd->qk", own_vectors[np.maximum(top100, 0)], own_queries)
            exact[top100 < 0] = -np.inf
            reranked = np.take_along_axis(top100, np.argsort(-exact, axis=1, kind="stable")[:, :10], 1)
        for threads in (DEFAULT_THREADS, 1):
            faiss.omp_set_num_threads(threads)
            busy = common.busy_cores(0.5)  # other processes (this one is idle meanwhile)
            single = latencies(lambda q: index.search(q, k=10), queries[:timed])
            row = {
                "size": size,
                "index": name,
                "nprobe": nprobe,
                "threads": threads,
                "busy_cores_before": busy,
                "train_s": train_s,
                "add_s": add_s,
                "rss_bytes": rss,
                "file_bytes": file_bytes,
                "p50_ms": 1000 * common.percentile(single, 50),
                "p99_ms": 1000 * common.percentile(single, 99),
                "recall_at_10": recall(found, own_top),  # against the exact search of its own space
                "top10_overlap_with_flat": recall(found, flat_top),
                "recall_at_10_reranked_100": recall(reranked, own_top) if reranked is not None else None,
            }
            if full:
                three = latencies(lambda q: index.search(q, k=10), variants[:timed])
                row["three_variants_p50_ms"] = 1000 * common.percentile(three, 50)
                expand = expander(spec, index, vectors)
                with_aqe = latencies(lambda q: index.search(expand(q), k=10), queries[:timed])
                row["aqe_p50_ms"] = 1000 * common.percentile(with_aqe, 50)
                row["aqe_p99_ms"] = 1000 * common.percentile(with_aqe, 99)
            rows.append(row)
        faiss.omp_set_num_threads(DEFAULT_THREADS)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="100k and 1M vectors (default: 100k)")
    parser.add_argument("--sizes", type=int, nargs="+")
    parser.add_argument("--indexes", nargs="+", choices=list(INDEXES), default=list(INDEXES))
    parser.add_argument("--timed", type=int, default=100, help="queries timed one by one (recall uses all 200)")
    parser.add_argument("--child", nargs=2, metavar=("SIZE", "INDEX"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(int(args.child[0]), args.child[1], min(QUERIES, args.timed))))
        return
    args.sizes = args.sizes or ([100_000, 1_000_000] if args.full else [100_000])
    global_retrieval.originals(), global_retrieval.distractors(2000)  # cached before the children start
    rows = []
    for size in args.sizes:
        for name in args.indexes:
            need = (2.2 if name == "flat" else 1.6) * size * 1280 * 4
            if psutil.virtual_memory().available < need:
                raise SystemExit(
                    f"{name} at {size:,} vectors wants ~{need / 2**30:.1f} GiB free; "
                    f"{psutil.virtual_memory().available / 2**30:.1f} GiB is"
                )
            started = time.perf_counter()
            command = [sys.executable, __file__, "--child", str(size), name, "--timed", str(args.timed)]
            done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
            rows += json.loads(done.stdout.splitlines()[-1])
            print(f"note: {name} at {size:,} vectors: {time.perf_counter() - started:.0f} s", file=sys.stderr)
    common.save_json(
        f"global_search_latency-{'-'.join(map(str, args.sizes))}",
        {
            "faiss_threads": faiss.omp_get_max_threads(),
            "rows": rows,
        },
    )

    print(
        f"## Global features: search latency at {' and '.join(f'{s:,}' for s in args.sizes)} vectors "
        f"(1280-d, k=10, {min(QUERIES, args.timed)} timed queries)\n"
    )
    print(
        common.table(
            [
                "vectors",
                "index",
                "nprobe",
                "FAISS threads",
                "p50 ms",
                "p99 ms",
                "3 variants p50 ms",
                "+ AQE(3, 3.0) p50 / p99 ms",
                "recall@10",
                "recall@10, top 100 re-ranked exactly",
                "top-10 overlap with flat",
                "RSS MiB",
                "file MiB",
                "train s",
                "add s",
            ],
            [
                [
                    f"{r['size']:,}",
                    r["index"],
                    r["nprobe"] or "-",
                    r["threads"],
                    f"{r['p50_ms']:.2f}",
                    f"{r['p99_ms']:.2f}",
                    f"{r['three_variants_p50_ms']:.2f}" if "three_variants_p50_ms" in r else "",
                    f"{r['aqe_p50_ms']:.2f} / {r['aqe_p99_ms']:.2f}" if "aqe_p50_ms" in r else "",
                    f"{r['recall_at_10']:.3f}",
                    f"{r['recall_at_10_reranked_100']:.3f}" if r.get("recall_at_10_reranked_100") is not None else "",
                    f"{r['top10_overlap_with_flat']:.3f}",
                    f"{r['rss_bytes'] / 2**20:,.0f}",
                    f"{r['file_bytes'] / 2**20:,.0f}",
                    f"{r['train_s']:.1f}" if r["train_s"] > 0.01 else "-",
                    f"{r['add_s']:.1f}",
                ]
                for r in rows
            ],
        )
    )
    print(
        "\nrecall@10: against the exact search of the index's own space (flat for compressed, flat + whitening "
        "for whitened + compressed); the overlap column is against plain flat."
    )
    busy = [r["busy_cores_before"] for r in rows]
    print(f"\nOther processes used {min(busy):.2f}-{max(busy):.2f} cores just before the timings.")
    print(f"\n{common.machine_markdown()}")


if __name__ == "__main__":
    main()
