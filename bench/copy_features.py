"""Features of the copy-detection corpus (`copy_corpus.py`), extracted once and cached.

Every stored image (originals, then distractors) through every engine's `extract`, and every query
(original x transform) through every engine's `query_variants`, exactly as a Library does it: one
decode per image for all engines (`decode_for`). Two worker processes of one thread each; chunks of
CHUNK items are pickled under bench/results/cache/copy_fusion/, so a run resumes where it stopped.
phash and color queries are cheap and re-made by `copy_fusion.py` itself, so that their query
variants (phash's turns) can change without extracting again.

Run: .venv/bin/python bench/copy_features.py   (takes about an hour on 2 cores)
     .venv/bin/python bench/copy_features.py --queries local,global --stored local   (those engines'
     query variants and stored features extracted again into the cached chunks, after they changed;
     delete the library under the cache folder then, so that copy_fusion.py builds it again)
"""

import argparse
import os
import pickle
import sys
import time
from concurrent.futures import ProcessPoolExecutor

os.environ["OMP_NUM_THREADS"] = "1"

import common  # noqa: E402
import copy_corpus as corpus  # noqa: E402
from PIL import ImageOps  # noqa: E402

ENGINES = ["phash", "color", "local", "global", "image_text", "tags", "text"]
# phash, color: made when searching. MIRRORED_LOCAL: the local engine's variants of the query's mirror
# image, which the gateway matches with its leading hits when they look like the query but none is a copy.
MIRRORED_LOCAL = "local-mirrored"
QUERY_ENGINES = ["local", "global", "image_text", "tags", "text", MIRRORED_LOCAL]
CHUNK = 40
FOLDER = common.CACHE_DIR / "copy_fusion"
MAX_PIXELS = 100_000_000
_engines = {}


def _start() -> None:
    import cv2

    from lookalike.engines import create_engine
    from lookalike.models import runtime

    cv2.setNumThreads(1)
    runtime.set_threads(1)
    _engines.update({name: create_engine(name) for name in ENGINES})


def _extract_stored(image_ids: list[int], names: list[str] = ENGINES) -> list[dict]:
    from lookalike.engines import decode_for

    engines = [_engines[name] for name in names]
    found = []
    for image_id in image_ids:
        images = decode_for(engines, corpus.item_bytes(image_id), MAX_PIXELS)
        found.append({engine.name: engine.extract(images[engine.name]) for engine in engines})
    return found


def _extract_queries(pairs: list[tuple[int, str]], names: list[str] = QUERY_ENGINES) -> list[dict]:
    from lookalike.engines import decode_for

    engines = [_engines[name] for name in {"local" if name == MIRRORED_LOCAL else name for name in names}]
    found = []
    for original, transform in pairs:
        images = decode_for(engines, corpus.query(original, transform), MAX_PIXELS)
        variants = {e.name: e.query_variants(images[e.name]) for e in engines if e.name in names}
        if MIRRORED_LOCAL in names:
            variants[MIRRORED_LOCAL] = _engines["local"].query_variants(ImageOps.mirror(images["local"]))
        found.append(variants)
    return found


def chunk_path(kind: str, start: int):
    return FOLDER / f"{kind}-{start:06d}.pkl"


def query_pairs() -> list[tuple[int, str]]:
    return [(original, t) for original in range(len(corpus.originals()[0])) for t in corpus.TRANSFORMS]


def load(kind: str, count: int) -> list[dict]:
    found = []
    for start in range(0, count, CHUNK):
        found += pickle.loads(chunk_path(kind, start).read_bytes())
    return found


def _refreshed(kind: str, items: list, start: int, names: list[str]) -> list[dict]:
    """A cached chunk with `names`' features (stored) or variants (queries) extracted again."""
    cached = pickle.loads(chunk_path(kind, start).read_bytes())
    extract = _extract_stored if kind == "stored" else _extract_queries
    return [old | new for old, new in zip(cached, extract(items, names))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", help="engines whose cached query variants to extract again, comma-separated")
    parser.add_argument("--stored", help="engines whose cached stored features to extract again, comma-separated")
    args = parser.parse_args()
    FOLDER.mkdir(parents=True, exist_ok=True)
    corpus.check_sources()
    stored, pairs = list(range(corpus.stored_images())), query_pairs()
    if args.queries or args.stored:
        jobs = []
        for kind, given, items, known in (
            ("stored", args.stored, stored, ENGINES),
            ("queries", args.queries, pairs, QUERY_ENGINES),
        ):
            names = given.split(",") if given else []
            assert set(names) <= set(known), f"{kind}: {known}"
            jobs += [
                (kind, s, _refreshed, (kind, items[s : s + CHUNK], s, names))
                for s in range(0, len(items), CHUNK)
                if names
            ]
    else:
        jobs = [("stored", s, _extract_stored, (stored[s : s + CHUNK],)) for s in range(0, len(stored), CHUNK)]
        jobs += [("queries", s, _extract_queries, (pairs[s : s + CHUNK],)) for s in range(0, len(pairs), CHUNK)]
        jobs = [job for job in jobs if not chunk_path(job[0], job[1]).exists()]
    print(f"{len(stored)} stored images, {len(pairs)} queries; {len(jobs)} chunks of {CHUNK} to extract", flush=True)
    started = time.monotonic()
    with ProcessPoolExecutor(2, initializer=_start) as pool:
        futures = [(kind, start, pool.submit(fn, *arguments)) for kind, start, fn, arguments in jobs]
        for done, (kind, start, future) in enumerate(futures, 1):
            path = chunk_path(kind, start)
            path.with_suffix(".tmp").write_bytes(pickle.dumps(future.result()))
            path.with_suffix(".tmp").rename(path)
            elapsed = time.monotonic() - started
            print(
                f"{done}/{len(futures)} chunks, {elapsed:.0f} s, eta {elapsed / done * (len(futures) - done):.0f} s",
                file=sys.stderr,
                flush=True,
            )


if __name__ == "__main__":
    main()
