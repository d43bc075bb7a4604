"""The Milvus index backend (Milvus Lite, embedded) against FAISS, in the same run.

1. Copy detection: the 149 originals of bench/copy_detection.py (46 test photos + 103 mvtb photos,
   JPEG q90) in two libraries of phash, color, global and local, one per backend, holding the same
   features (extracted once, written to both with add_many). Each of the 11 transformed copies of
   each original is turned into its engines' query variants once (a process pool), and each
   backend's index answers k=1 for the same variants, after a checkpoint (Milvus seals and indexes
   what it holds, as the service's checkpoint each minute makes it): recall@1 per engine and backend.
2. Each engine's index at --size vectors (default 100k): search latency (p50 and p90 of --queries
   single searches through the index protocol, k=10, alternating backends) and recall@10 against
   exact search (numpy, brute force) of the same queries.
   - phash: random 576-bit codes; queries are stored codes with 20 random bits flipped.
   - color: sparse histograms (Dirichlet, alpha 0.05, 512 bins); queries are stored histograms mixed
     90/10 with another random histogram. Truth: exact L1. Also what the substitute alone does (the
     10 nearest by L2 on square roots, before the exact L1 re-score) here and on real histograms:
     the copies of part 1, every 8th asked of the others.
   - global (1280-d) and image_text (384-d): unit vectors around 1,000 random centres (noise 0.6 of
     the centre's norm), queries are stored vectors with noise 0.2 added. Truth: exact inner product.
   - local: real RootSIFT descriptors of the originals and then their copies from part 1 (with
     --indexes-only: of the copies alone, from part 1's cache), as many
     images as make --size descriptors stored; the queries are the descriptor sets of the copies
     after them (about 200 each). Latency: the voted candidates of one query (the index's nearest-
     neighbour search and the vote, before verification); recall@10: per query descriptor, the
     images owning its 10 nearest stored descriptors against exact search's (20 queries).
   Synthetic vectors are not photos: recall on them is a stress test of the ANN index, not a
   measure of search quality; part 1 is the quality measure.

Run: LOOKALIKE_MODELS_DIR=/tmp/lkm .venv/bin/python bench/milvus_index.py [--size 100000]
"""

import argparse
import os
import pickle
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import common
import numpy as np
from copy_detection import TRANSFORMS, copies

from lookalike.decode import DEFAULT_MAX_PIXELS
from lookalike.engines import create_engine, decode_for
from lookalike.features import FeatureSpec, Keypoints
from lookalike.indexes import IndexSetup, index_kind
from lookalike.indexes.milvus import Milvus, MilvusAddress
from lookalike.library import Library
from lookalike.store import ImageRecord

sys.path.insert(0, str(Path(__file__).parents[1] / "tests"))
from helpers import MemorySource  # noqa: E402

ENGINES = ["phash", "color", "global", "local"]
_engines = {}


def options() -> dict:
    models_dir = os.environ.get("LOOKALIKE_MODELS_DIR")
    return {"global": {"models_dir": models_dir}} if models_dir else {}


def query_variants(data: bytes) -> dict:
    """Each engine's query variants of one copy, as `Library.similar_to_image` makes them."""
    if not _engines:
        _engines.update({name: create_engine(name, options().get(name)) for name in ENGINES})
    images = decode_for(_engines.values(), data, DEFAULT_MAX_PIXELS)
    return {name: engine.query_variants(images[name]) for name, engine in _engines.items()}


def cached_queries(originals: list[bytes]) -> list[list[dict]]:
    """Each original's copies' query variants, made once (a process pool) and kept in the cache."""
    path = common.CACHE_DIR / f"milvus_index_queries_{len(originals)}.pickle"
    if path.exists():
        return pickle.loads(path.read_bytes())
    with ProcessPoolExecutor() as pool:
        transformed = list(pool.map(copies, originals, chunksize=4))
        queries = [list(pool.map(query_variants, list(each.values()))) for each in transformed]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(queries))
    return queries


def copy_detection(
    tmp: Path, names: list[str], originals: list[bytes], queries: list[list[dict]]
) -> tuple[str, list[Keypoints]]:
    faiss = Library(tmp / "faiss", ENGINES, engine_options=options())
    milvus = Library(tmp / "milvus", ENGINES, engine_options=options(), milvus=MilvusAddress())
    descriptors = []
    for image_id, data in enumerate(originals):
        features = faiss.extract(data)
        descriptors.append(features["local"])
        for library in (faiss, milvus):
            library.add_many([(ImageRecord(image_id, names[image_id]), features)])
    for library in (faiss, milvus):
        library.checkpoint()  # as the service does each minute: Milvus seals and indexes what it holds
    found = {(backend, engine): 0 for backend in ("faiss", "milvus") for engine in ENGINES}
    agree = 0
    for image_id, per_copy in enumerate(queries):
        for variants in per_copy:
            for engine in ENGINES:
                answers = []
                for backend, library in (("faiss", faiss), ("milvus", milvus)):
                    hits = library.indexes[engine].search(variants[engine], 1)
                    found[backend, engine] += bool(hits) and hits[0].image_id == image_id
                    answers.append([(h.image_id, round(h.score, 4)) for h in hits])
                agree += answers[0] == answers[1]
            descriptors += [variants["local"][0]]
    faiss.close()
    milvus.close()
    total = len(originals) * len(TRANSFORMS)
    rows = [[engine] + [f"{found[b, engine] / total:.3f}" for b in ("faiss", "milvus")] for engine in ENGINES]
    report = (
        f"### Copy detection: recall@1 over {len(originals)} originals x {len(TRANSFORMS)} transforms\n\n"
        + common.table(["engine", "FAISS recall@1", "Milvus Lite recall@1"], rows)
        + f"\n\nSame top hit and score from both backends: {agree} of {total * len(ENGINES)} searches.\n"
    )
    return report, descriptors


def clustered(rng, n: int, dim: int, centres: np.ndarray, noise: float) -> np.ndarray:
    vectors = (
        centres[rng.integers(0, len(centres), n)] + rng.normal(size=(n, dim)).astype(np.float32) * noise / dim**0.5
    )
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def synthetic(rng, engine: str, size: int, queries: int):
    """(spec, stored, queries, each stored vector's exact distance to a query)."""
    if engine == "phash":
        stored = rng.integers(0, 256, (size, 72), dtype=np.uint8)
        asked = stored[rng.integers(0, size, queries)].copy()
        for row in asked:
            for bit in rng.choice(576, 20, replace=False):
                row[bit // 8] ^= 1 << (bit % 8)
        distance = lambda q: np.bitwise_count(stored ^ q).sum(axis=1)  # noqa: E731
        return FeatureSpec("binary", 576, "hamming"), stored, asked, distance
    if engine == "color":
        stored = rng.dirichlet(np.full(512, 0.05), size).astype(np.float32)
        asked = 0.9 * stored[rng.integers(0, size, queries)] + 0.1 * rng.dirichlet(np.full(512, 0.05), queries)
        asked = asked.astype(np.float32)
        return FeatureSpec("float", 512, "l1"), stored, asked, lambda q: np.abs(stored - q).sum(axis=1)
    dim = {"global": 1280, "image_text": 384}[engine]
    centres = rng.normal(size=(1000, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    stored = clustered(rng, size, dim, centres, 0.6 * dim**0.5)
    asked = stored[rng.integers(0, size, queries)] + rng.normal(size=(queries, dim)).astype(np.float32) * 0.2 / dim**0.5
    asked = (asked / np.linalg.norm(asked, axis=1, keepdims=True)).astype(np.float32)
    return FeatureSpec("float", dim, "ip"), stored, asked, lambda q: -(stored @ q)


def substitute_recall(stored: np.ndarray, asked: np.ndarray) -> float:
    """Recall@10 against exact L1 of the 10 nearest by L2 on square roots (color's form in Milvus)
    alone, before its re-score; ties with the exact 10th count as right."""
    roots = np.sqrt(stored)
    recall = []
    for query in asked:
        exact = np.abs(stored - query).sum(axis=1)
        truth = np.flatnonzero(exact <= np.partition(exact, 9)[9])
        found = np.argpartition(((roots - np.sqrt(query)) ** 2).sum(axis=1), 9)[:10]
        recall.append(len(np.intersect1d(truth, found)) / min(len(truth), 10))
    return float(np.mean(recall))


def substitute_row(label: str, stored: np.ndarray, asked: np.ndarray) -> list:
    return [f"color: L2 on square roots alone, {label}", "exact", "", "", "", f"{substitute_recall(stored, asked):.3f}"]


def ready(index) -> None:
    """Seal what was added and load it again: Milvus Lite builds a sealed segment's index in the
    background, and synchronously on load, so the searches measure the index, not its building."""
    index.collection.flush()
    index.collection._call("release_collection")
    index.collection._call("load_collection")


def vector_engines(milvus: Milvus, size: int, queries: int) -> list[list]:
    rows = []
    rng = np.random.default_rng(0)
    for engine in ("phash", "color", "global", "image_text"):
        spec, stored, asked, distance = synthetic(rng, engine, size, queries)
        ids = np.arange(size, dtype=np.int64) * 3 + 1
        source = MemorySource(spec, dict(zip(ids.tolist(), stored)))
        # Recall@10 counts ties: any hit as near as the exact 10th is right (random codes tie a lot).
        truth = []
        for query in asked:
            exact = distance(query)
            truth.append(set(ids[exact <= np.partition(exact, 9)[9]].tolist()))
        indexes = {}
        for backend in ("faiss", "milvus"):
            setup = IndexSetup(source, Path(engine), milvus=milvus if backend == "milvus" else None)
            index = index_kind(spec, backend)(setup)
            started = time.perf_counter()
            for start in range(0, size, 10_000):
                index.add(ids[start : start + 10_000], stored[start : start + 10_000])
            if backend == "milvus":
                ready(index)
            indexes[backend] = (index, time.perf_counter() - started)
        rows += measure(
            engine, indexes, [[q] for q in asked], truth, lambda index, q: [h.image_id for h in index.search(q, 10)]
        )
        if engine == "color":
            rows.append(substitute_row("these histograms", stored, asked))
    return rows


def measure(engine, indexes, asked, truth, search) -> list[list]:
    times = {backend: [] for backend in indexes}
    recall = {backend: [] for backend in indexes}
    for query, expected in zip(asked, truth):
        for backend, (index, _) in indexes.items():  # alternating: the machine's noise falls on both
            started = time.perf_counter()
            found = search(index, query)
            times[backend].append(time.perf_counter() - started)
            if expected is not None:
                recall[backend].append(len(expected & set(found)) / min(len(expected), 10))
    return [
        [
            engine,
            backend,
            f"{built:.1f}",
            f"{common.median(times[backend]) * 1000:.2f}",
            f"{common.percentile(times[backend], 90) * 1000:.2f}",
            f"{np.mean(recall[backend]):.3f}" if recall[backend] else "",
        ]
        for backend, (_, built) in indexes.items()
    ]


def local_engine(milvus: Milvus, descriptors: list[Keypoints], size: int, queries: int) -> list[list]:
    """Descriptors of the first images, up to `size`, stored; descriptor sets of later images asked."""
    spec = FeatureSpec("points", 128, "l2")
    stored, total = {}, 0
    for image_id, keypoints in enumerate(descriptors):
        if total >= size:
            break
        stored[image_id] = keypoints
        total += len(keypoints)
    asked = [k for k in descriptors[len(stored) :] if len(k)][:queries]
    matrix = np.concatenate([k.descriptors for k in stored.values()]).astype(np.float32)
    owner = np.repeat(list(stored), [len(k) for k in stored.values()])
    indexes = {}
    for backend in ("faiss", "milvus"):
        setup = IndexSetup(MemorySource(spec, stored), Path("local"), milvus=milvus if backend == "milvus" else None)
        started = time.perf_counter()
        index = index_kind(spec, backend).build(setup)
        if backend == "milvus":
            ready(index)
        indexes[backend] = (index, time.perf_counter() - started)
    rows = measure("local (vote)", indexes, asked, [None] * len(asked), lambda index, q: index._candidates(q) and [])
    # Recall@10 of the descriptors' nearest neighbours, by images owning them, per query descriptor.
    recall = {backend: [] for backend in indexes}
    for keypoints in asked[:20]:
        query = keypoints.descriptors.astype(np.float32)
        squared = (query**2).sum(1)[:, None] - 2 * query @ matrix.T + (matrix**2).sum(1)[None]
        exact = np.argsort(squared, axis=1, kind="stable")[:, :10]
        faiss_index = indexes["faiss"][0]
        _, points = faiss_index._index.search(query, 10)
        found = {"faiss": faiss_index.ranges.lookup(points)}
        hits = indexes["milvus"][0].collection.search(query, 10, {"nprobe": 16}, fields=("image_id",))
        found["milvus"] = np.array([[h["entity"]["image_id"] for h in row] + [-1] * (10 - len(row)) for row in hits])
        for backend, images in found.items():
            for row, truth_row in zip(images, owner[exact]):
                recall[backend].append(len(set(row.tolist()) & set(truth_row.tolist())) / len(set(truth_row.tolist())))
    for row in rows:
        row[-1] = f"{np.mean(recall[row[1]]):.3f} (images of the 10 nearest descriptors)"
    return rows + [[f"local: {total} descriptors of {len(stored)} images", "", "", "", "", ""]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--indexes-only", action="store_true", help="part 2 only, local on the copies' descriptors")
    args = parser.parse_args()
    photos = {**common.test_photos(), **common.mvtb_photos()}
    names, originals = list(photos), [common.jpeg(image) for image in photos.values()]
    del photos
    queries = cached_queries(originals)
    copied = [variants for each in queries for variants in each]
    with tempfile.TemporaryDirectory() as tmp:
        if not args.indexes_only:
            report, descriptors = copy_detection(Path(tmp), names, originals, queries)
            print(report, flush=True)
        milvus = Milvus(Path(tmp) / "bench.db")
        rows = vector_engines(milvus, args.size, args.queries)
        histograms = np.stack([variants["color"][0] for variants in copied])
        rows.append(substitute_row("real photos' copies", np.delete(histograms, np.s_[::8], 0), histograms[::8]))
        if args.indexes_only:
            descriptors = [variants["local"][0] for variants in copied]
        rows += local_engine(milvus, descriptors, args.size, args.queries)
        milvus.close()
    headers = ["engine", "backend", "built (s)", "search p50 (ms)", "search p90 (ms)", "recall@10"]
    print(f"### Each engine's index at {args.size} vectors, {args.queries} queries, k=10\n")
    print(common.table(headers, rows))
    print(f"\n{common.machine_markdown()}")


if __name__ == "__main__":
    main()
