"""Global features: retrieving the other views of a scene, with alpha query expansion and PCA whitening.

Photos: the 149 real photos of copy_detection.py (46 test photos + 103 mvtb photos), each JPEG q90 at
its own size, embedded by the global engine (EfficientNet-Lite2, the default) through its real path
(JPEG -> engines.decode_for_engine -> GlobalFeatures.extract_many). Queries: the mvtb photos that belong to a
multi-view group below (the same scene from another viewpoint, another frame, or an overlapping
tile); a query's positives are the other members of its group, everything else is a negative,
except "junk": photos of a neighbouring group that show part of the same view, which are left out
of that query's ranking (as in Oxford5k). The groups were made by looking at the photos:

- unambiguous: building2 (3), eiffel (2), rocks2 stereo pair (2), walls stereo pair (2),
  calibration (14 shots of one room with a chessboard), seq (9 frames of a toy house scene), aerial2
  (10 overlapping aerial frames), aerial (aerial-08/09/10 and aerialphoto, which contains aerial-08);
  aerial and aerial2 are each other's junk (one city, maybe overlapping).
- campus: a walk round one campus (mvtb/campus, holdout/ included), split by building: red brick
  (4), brick with cream pilasters (3), the cafe with blue umbrellas (3), the white-window building (5),
  the sandstone colonnade (6), the library among palms (4); pilasters/cafe and cafe/white-windows are
  each other's junk (their photos share part of the view).

Every query is a stored image: library.similar_to_id("global", id, k=all, expansion=...), its full
ranking scored by average precision (mAP), precision at 1 and R-precision (precision at rank R, R =
the number of positives). Two databases:

- A: the 149 photos only. Plain; alpha query expansion (QueryExpansion(n, 3.0), n = 1, 2, 3);
  whitening learned from distractors only (indexes.templates.train_template(spec, distractors, 512,
  False), the index of the Library replaced by a VectorIndex made from that template); whitening +
  expansion; and, for comparison, expansion done in the whitened space (the whitened vectors
  averaged, in the script).
- B: the 149 photos + the distractors in one Library; plain, expansion, A's whitening (learned from
  the distractors only), and library.train("global", whiten=True, compressed=False), the product
  path (whitening learned from everything stored, queries included, 512 dims), + expansion.

Distractors (--distractors, default 2,000): local_crop_recall.py's distractors, i.e. tiles and
random crops (20-60% of the area, some rotated, colour-shifted, downscaled or mirrored) of 44 real
photos that are *not* among the 149 (9 other scikit-image photos and OpenCV's sample photos), so no
distractor shows a query's scene. Features are cached under ~/.cache/lookalike/bench/global_features/.

Run: LOOKALIKE_MODELS_DIR=/tmp/lk-models .venv/bin/python bench/global_retrieval.py [--distractors 2000]
"""

import argparse
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import common
import faiss
import numpy as np

from lookalike.engines import create_engine, decode_for_engine
from lookalike.indexes import IndexSetup
from lookalike.indexes.templates import train_template
from lookalike.indexes.vectors import VectorIndex
from lookalike.library import Library, QueryExpansion
from lookalike.models import DEFAULT_MODELS_DIR
from lookalike.store import ImageRecord

CACHE = Path.home() / ".cache/lookalike/bench/global_features"
MAX_PIXELS = 200_000_000
DISTRACTOR_ID0 = 1_000_000
MODEL = "efficientnet-lite2"


def models_dir() -> Path:
    return Path(os.environ.get("LOOKALIKE_MODELS_DIR", DEFAULT_MODELS_DIR))


def _campus(*numbers: int) -> list[str]:
    holdout = {492, 502, 508, 511, 513}
    return [f"mvtb/campus/{'holdout/' if n in holdout else ''}P1070{n}.png" for n in numbers]


GROUPS = {
    "building2": [f"mvtb/building2-{i}.png" for i in (1, 2, 3)],
    "eiffel": ["mvtb/eiffel-1.png", "mvtb/eiffel-2.png"],
    "rocks2": ["mvtb/rocks2-l.png", "mvtb/rocks2-r.png"],
    "walls": ["mvtb/walls-l.png", "mvtb/walls-r.png"],
    "calibration": [f"mvtb/calibration/left{i:02d}.jpg" for i in range(1, 15)],
    "seq": [f"mvtb/seq/im.{i:03d}.png" for i in range(1, 10)],
    "aerial2": [f"mvtb/mosaic/aerial2-{i:03d}.png" for i in range(1, 11)],
    "aerial": [
        "mvtb/mosaic/aerial-08.png",
        "mvtb/mosaic/aerial-09.png",
        "mvtb/mosaic/aerial-10.png",
        "mvtb/mosaic/aerialphoto.png",
    ],
    "campus/red-brick": _campus(491, 492, 493, 494),
    "campus/pilasters": _campus(495, 496, 497),
    "campus/cafe": _campus(498, 499, 504),
    "campus/white-windows": _campus(500, 501, 502, 503, 505),
    "campus/sandstone": _campus(506, 507, 508, 509, 510, 514),
    "campus/library": _campus(511, 512, 513, 515),
}
JUNK = {
    "aerial": ["aerial2"],
    "aerial2": ["aerial"],
    "campus/pilasters": ["campus/cafe"],
    "campus/cafe": ["campus/pilasters", "campus/white-windows"],
    "campus/white-windows": ["campus/cafe"],
}
EXPANSIONS = [None, QueryExpansion(1, 3.0), QueryExpansion(2, 3.0), QueryExpansion(3, 3.0)]


# -- features, cached ----------------------------------------------------------------------------------


def embed(engine, jpegs: list[bytes], batch: int = 16) -> np.ndarray:
    """The engine's features of JPEG bytes, through its real path, in batches."""
    found = []
    for start in range(0, len(jpegs), batch):
        images = [decode_for_engine(engine, data, MAX_PIXELS) for data in jpegs[start : start + batch]]
        found += engine.extract_many(images)
    return np.stack(found).astype(np.float32)


def cached(tag: str, names: list[str], make_jpegs, model: str = MODEL) -> np.ndarray:
    """(len(names), dim) features of the images `make_jpegs()` returns, cached on disk by names and model."""
    key = hashlib.sha256(json.dumps([model, names]).encode()).hexdigest()[:12]
    path = CACHE / f"{tag}-{model}-{key}.npy"
    if path.exists():
        return np.load(path)
    engine = create_engine("global", {"model": model, "models_dir": models_dir()})
    started = time.perf_counter()
    features = embed(engine, make_jpegs())
    print(f"note: embedded {len(names)} {tag} images with {model} in {time.perf_counter() - started:.0f} s")
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path.with_suffix(".tmp.npy"), features)
    path.with_suffix(".tmp.npy").rename(path)
    return features


def originals(model: str = MODEL) -> tuple[list[str], np.ndarray]:
    """The 149 real photos' names and global features (JPEG q90 at their own size)."""
    photos = {**common.test_photos(), **common.mvtb_photos()}
    names = list(photos)
    return names, cached("originals", names, lambda: [common.jpeg(image) for image in photos.values()], model)


def distractors(n: int, model: str = MODEL) -> tuple[list[str], np.ndarray]:
    """local_crop_recall.py's `n` distractors (tiles and crops of 44 photos that are not originals)."""
    import local_crop_recall as recall

    sources = recall.split_photos()[1]
    chosen = recall.recipes(sources, n, common.SEED)
    names = [f"{r[0]}#{i}|{r[1:]}" for i, r in enumerate(chosen)]

    def make() -> list[bytes]:
        return [common.jpeg(recall.make_distractor(sources[r[0]], r)) for r in chosen]

    return [name.split("|")[0] for name in names], cached(f"distractors{n}", names, make, model)


# -- scoring ---------------------------------------------------------------------------------------------


def queries(names: list[str]) -> list[tuple[int, str, set[int], set[int]]]:
    """(query id, group, positive ids, junk ids) for every photo in a group."""
    index = {name: i for i, name in enumerate(names)}
    missing = [n for members in GROUPS.values() for n in members if n not in index]
    if missing:
        raise SystemExit(f"photos of the groups missing (scripts/fetch-photos DIR --with-mvtb): {missing[:5]}")
    found = []
    for group, members in GROUPS.items():
        ids = {index[n] for n in members}
        junk = {index[n] for other in JUNK.get(group, []) for n in GROUPS[other]}
        found += [(i, group, ids - {i}, junk) for i in sorted(ids)]
    return found


def scores(ranking: list[int], positives: set[int], junk: set[int]) -> dict[str, float]:
    ranking = [i for i in ranking if i not in junk]
    hits = np.array([i in positives for i in ranking], bool)
    ranks = np.flatnonzero(hits) + 1  # every positive is in the ranking: k covers the whole database
    assert len(ranks) == len(positives), (len(ranks), len(positives))
    precision_at_hits = np.arange(1, len(ranks) + 1) / ranks
    return {
        "ap": float(precision_at_hits.mean()),
        "p1": float(hits[0]),
        "rprec": float(hits[: len(positives)].mean()),
    }


def run(library: Library, chosen, expansion, total: int) -> list[dict]:
    found = []
    for image_id, group, positives, junk in chosen:
        matches = library.similar_to_id("global", image_id, k=total, expansion=expansion)
        found.append({"group": group, **scores([m.image_id for m in matches], positives, junk)})
    return found


def whitened_space_aqe(template, ids, vectors, chosen, n: int, alpha: float) -> list[dict]:
    """Alpha query expansion on the whitened vectors themselves (what Library does: on the raw ones)."""
    whitened = np.ascontiguousarray(vectors, np.float32)
    chain = template.index.chain
    for i in range(chain.size()):
        whitened = faiss.downcast_VectorTransform(chain.at(i)).apply(whitened)
    similarity = whitened @ whitened.T
    position = {int(image_id): row for row, image_id in enumerate(ids)}
    found = []
    for image_id, group, positives, junk in chosen:
        row = position[image_id]
        order = [j for j in np.argsort(-similarity[row], kind="stable") if j != row]
        query = whitened[row] + (np.clip(similarity[row, order[:n]], 0, None) ** alpha) @ whitened[order[:n]]
        query /= np.linalg.norm(query)
        ranking = [int(ids[j]) for j in np.argsort(-(whitened @ query), kind="stable") if j != row]
        found.append({"group": group, **scores(ranking, positives, junk)})
    return found


def summarise(rows: list[dict]) -> dict[str, float]:
    def mean(key, subset):
        values = [r[key] for r in subset]
        return float(np.mean(values)) if values else float("nan")

    clear = [r for r in rows if not r["group"].startswith("campus/")]
    campus = [r for r in rows if r["group"].startswith("campus/")]
    return {
        "map": mean("ap", rows),
        "p1": mean("p1", rows),
        "rprec": mean("rprec", rows),
        "map_unambiguous": mean("ap", clear),
        "map_campus": mean("ap", campus),
        "per_group_map": {g: mean("ap", [r for r in rows if r["group"] == g]) for g in GROUPS},
    }


def fill(library: Library, ids, names, vectors) -> None:
    items = [(ImageRecord(int(i), n), {"global": v}) for i, n, v in zip(ids, names, vectors)]
    for start in range(0, len(items), 1000):
        library.add_many(items[start : start + 1000])


def swap_index(library: Library, index):
    """Put `index` in place of the library's global index; returns the one it replaced.

    IndexManager offers no way to swap an index: this reaches into its dict. Put the library's own
    back before it is closed, which saves the indexes.
    """
    replaced = library.indexes["global"]
    library.indexes._indexes["global"] = index
    return replaced


def label(expansion) -> str:
    return "plain" if expansion is None else f"AQE n={expansion.neighbours}, alpha {expansion.alpha:g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distractors", type=int, default=2000)
    args = parser.parse_args()
    names, vectors = originals()
    distractor_names, distractor_vectors = distractors(args.distractors)
    chosen = queries(names)
    spec = create_engine("global", {"models_dir": models_dir()}).spec
    options = {"global": {"models_dir": models_dir()}}
    results: dict[str, dict] = {}

    with tempfile.TemporaryDirectory() as tmp:
        # A: the 149 photos only.
        with Library(Path(tmp, "a"), ["global"], engine_options=options) as library:
            ids = np.arange(len(names))
            fill(library, ids, names, vectors)
            for expansion in EXPANSIONS:
                results[f"A|{label(expansion)}"] = summarise(run(library, chosen, expansion, len(names)))
            started = time.perf_counter()
            template = train_template(spec, distractor_vectors, 512, False)
            train_s = time.perf_counter() - started
            whitened = VectorIndex(IndexSetup(library.store.source("global"), None), template=template)
            whitened.add(ids, vectors)
            # Searched, never saved (no files): the template is not the library's own.
            stored = swap_index(library, whitened)
            for expansion in EXPANSIONS:
                key = f"A|whitened (distractors, 512) + {label(expansion)}"
                results[key] = summarise(run(library, chosen, expansion, len(names)))
            for n in (1, 2, 3):
                key = f"A|whitened (distractors, 512) + AQE n={n}, alpha 3 in the whitened space"
                results[key] = summarise(whitened_space_aqe(template, ids, vectors, chosen, n, 3.0))
            swap_index(library, stored)

        # B: the 149 photos and the distractors in one library; the product's whitening.
        with Library(Path(tmp, "b"), ["global"], engine_options=options) as library:
            fill(library, np.arange(len(names)), names, vectors)
            fill(library, DISTRACTOR_ID0 + np.arange(len(distractor_names)), distractor_names, distractor_vectors)
            total = len(names) + len(distractor_names)
            for expansion in EXPANSIONS:
                results[f"B|{label(expansion)}"] = summarise(run(library, chosen, expansion, total))
            # A's template: learned from the distractors.
            whitened = VectorIndex(IndexSetup(library.store.source("global"), None), template=template)
            whitened.add(*library.store.read_features("global"))
            stored = swap_index(library, whitened)
            for expansion in EXPANSIONS[:2]:
                key = f"B|whitened (distractors, 512) + {label(expansion)}"
                results[key] = summarise(run(library, chosen, expansion, total))
            swap_index(library, stored)
            started = time.perf_counter()
            dims = library.train("global", whiten=True, compressed=False)["whitened_dims"]
            train_b_s = time.perf_counter() - started
            for expansion in EXPANSIONS:
                key = f"B|train whitened ({dims}) + {label(expansion)}"
                results[key] = summarise(run(library, chosen, expansion, total))

    groups = {g: len(m) for g, m in GROUPS.items()}
    common.save_json(
        "global_retrieval",
        {
            "model": MODEL,
            "photos": len(names),
            "distractors": len(distractor_names),
            "queries": len(chosen),
            "groups": groups,
            "junk": JUNK,
            "train_s": {"A": train_s, "B": train_b_s},
            "results": results,
        },
    )

    campus = sum(1 for _, g, _, _ in chosen if g.startswith("campus/"))
    print(
        f"## Global features: other views of a scene ({MODEL}; {len(chosen)} queries in {len(GROUPS)} groups, "
        f"{len(chosen) - campus} unambiguous + {campus} campus)\n"
    )
    print(
        f"A: database = the {len(names)} real photos. B: the same + {len(distractor_names):,} distractors "
        "(crops and tiles of 44 other photos).\n"
    )
    rows = []
    for key, r in results.items():
        database, setting = key.split("|")
        rows.append(
            [
                database,
                setting,
                f"{r['map']:.3f}",
                f"{r['map_unambiguous']:.3f}",
                f"{r['map_campus']:.3f}",
                f"{r['p1']:.3f}",
                f"{r['rprec']:.3f}",
            ]
        )
    print(common.table(["db", "setting", "mAP", "mAP unambiguous", "mAP campus", "P@1", "R-precision"], rows))
    print("\nPer group, mAP (A):\n")
    shown = [
        "A|plain",
        "A|AQE n=1, alpha 3",
        "A|AQE n=3, alpha 3",
        "A|whitened (distractors, 512) + plain",
        "A|whitened (distractors, 512) + AQE n=1, alpha 3",
    ]
    print(
        common.table(
            ["group", "photos", *[s.split("|")[1] for s in shown]],
            [[g, groups[g], *[f"{results[s]['per_group_map'][g]:.3f}" for s in shown]] for g in GROUPS],
        )
    )
    print("\nPer group, mAP (B):\n")
    shown = [
        "B|plain",
        "B|AQE n=1, alpha 3",
        "B|whitened (distractors, 512) + plain",
        f"B|train whitened ({dims}) + plain",
        f"B|train whitened ({dims}) + AQE n=3, alpha 3",
    ]
    print(
        common.table(
            ["group", "photos", *[s.split("|")[1] for s in shown]],
            [[g, groups[g], *[f"{results[s]['per_group_map'][g]:.3f}" for s in shown]] for g in GROUPS],
        )
    )
    print(
        f"\nWhitening training: {train_s:.2f} s on {len(distractor_names):,} distractors (A); "
        f"library.train {train_b_s:.2f} s on {len(names) + len(distractor_names):,} vectors (B, rebuild included)."
    )
    print(f"\n{common.machine_markdown()}")


if __name__ == "__main__":
    main()
