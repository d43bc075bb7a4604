"""Copy detection with every engine and their fusion: recall@1 per transform, verdicts, calibration.

Corpus: `copy_corpus.py` (originals, 17 transforms, 5,200 distractors of which 300 carry the same
stamp as the `text` transform); features: `copy_features.py` (cached; run it first). A Library of
every engine holds the originals and the distractors (built once from the cached features, kept
under bench/results/cache/copy_fusion/library; the local index trained as `maintain` trains it).
Each query asks every engine for its PER_ENGINE best, as `gateway.reverse_search` does (phash and
color query variants are made here from the query's bytes; the others come from the cache).

Fusion, with the originals split in two folds by their index's parity: each fold's queries are
fused with the calibration fitted on the other fold (so every fused number is held out), and the
calibration fitted on all queries is written to src/lookalike/calibration.json (--write). Against:
reciprocal rank fusion (k=60) of every engine with equal weights, and weighted by each engine's
recall@1 on the other fold.

Calibration, per engine: the listed hits' scores are cut into quantile bins (of the originals' hit
scores and of the others' separately, merged); a bin's likelihood ratio is (originals / others) x
(library size - 1), with half a count added to each; the log ratios are made monotone by isotonic
regression weighted by the bins' counts. Not being listed gets the ratio of the originals' and the
others' rates of not being listed. A hit's fused score is the sum over engines.

Verdicts: "present", every query with its original in the library (a success: the top hit is the
original with `copy` or better); "absent", the same queries with the original taken out of every
engine's list (what a library without it answers, but for the local engine's candidate choice): a
failure is any `copy` or better. copy_at is the smallest fused score at which the fitting fold's
absent queries get `copy` or better at most ABSENT_RATE of the time.

Run: .venv/bin/python bench/copy_fusion.py [--search] [--write]   (--search: search again, after a change to an
engine or an index; otherwise the lists of the last search are reused from the cache)
"""

import argparse
import json
import pickle
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import common
import copy_corpus as corpus
import copy_features as features
import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from lookalike.engines import decode_for
from lookalike.fusion import PAIR_ENGINES, PER_ENGINE, Calibration, EngineCalibration, Verdict, fuse, reciprocal_rank
from lookalike.indexes import Hit
from lookalike.library import Library
from lookalike.store import ImageRecord

LIBRARY = features.FOLDER / "library"
SEARCHED = features.FOLDER / "searched.pkl"  # every query's lists, as the last --search found them
CHEAP = ["phash", "color"]
UNTURNED = "phash, no turns"  # phash with its hash and its mirror image's alone, as before
BINS = 16  # per class
HARDEST = 20  # other candidates per query the engines' weights are learned against
LOG_RATIO_LIMITS = (-8.0, 12.0)
ABSENT_RATE = 0.005
STRONG = (Verdict.EXACT, Verdict.NEAR_DUPLICATE, Verdict.COPY)
# The similar tier: a global-features cosine distance within this shows the same scene (see docs).
SIMILAR_GLOBAL = 0.25


def open_library() -> Library:
    fresh = not LIBRARY.exists()
    library = Library(LIBRARY, features.ENGINES, max_pixels=features.MAX_PIXELS)
    if fresh:
        names = corpus.originals()[0]
        stored = features.load("stored", corpus.stored_images())
        for start in range(0, len(stored), 500):
            batch = [
                (ImageRecord(i, names[i] if i < len(names) else f"distractor-{i - len(names)}"), stored[i])
                for i in range(start, min(start + 500, len(stored)))
            ]
            library.add_many(batch)
        del stored
        started = time.monotonic()
        library.maintain()
        print(f"trained {library.due_for_training() or 'every due index'} in {time.monotonic() - started:.0f} s")
        library.checkpoint()
    return library


def search_everything(library: Library) -> list[dict[str, list[Hit]]]:
    """Each query's lists, engine by engine, in query order (original-major, then transform)."""
    pairs = features.query_pairs()
    cached = features.load("queries", len(pairs))
    cheap = [library.engines[name] for name in CHEAP]
    found = []
    started = time.monotonic()
    for n, ((original, transform), variants) in enumerate(zip(pairs, cached)):
        images = decode_for(cheap, corpus.query(original, transform), features.MAX_PIXELS)
        variants = {**variants, **{e.name: e.query_variants(images[e.name]) for e in cheap}}
        lists = {name: library._search(name, variants[name], PER_ENGINE, None) for name in features.ENGINES}
        lists[UNTURNED] = library._search("phash", variants["phash"][:2], PER_ENGINE, None)
        found.append(lists)
        if n % 500 == 499:
            print(f"{n + 1}/{len(pairs)} queries, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return found


def stamp_check(library: Library) -> None:
    """The local engine on the stamped queries with and without setting shared patterns aside."""
    import lookalike.engines.local as local

    pairs = features.query_pairs()
    cached = features.load("queries", len(pairs))
    stamped = [(o, t, v["local"]) for (o, t), v in zip(pairs, cached) if "text" in t]
    rows = []
    for guarded in (True, False):
        saved = local.SHARED_IN_IMAGES
        local.SHARED_IN_IMAGES = saved if guarded else 10**9
        try:
            lists = [library._search("local", variants, PER_ENGINE, None) for _, _, variants in stamped]
        finally:
            local.SHARED_IN_IMAGES = saved
        for transform in sorted({t for _, t, _ in stamped}):
            chosen = [(o, hits) for (o, t, _), hits in zip(stamped, lists) if t == transform]
            first = np.mean([bool(hits) and hits[0].image_id == o for o, hits in chosen])
            stamped_listed = np.mean(
                [
                    sum(
                        corpus.stamped(h.image_id - len(corpus.originals()[0]))
                        for h in hits
                        if h.image_id >= len(corpus.originals()[0])
                    )
                    for _, hits in chosen
                ]
            )
            rows.append([transform, "yes" if guarded else "no", f"{first:.3f}", f"{stamped_listed:.1f}"])
    print("\nThe local engine on stamped queries, the same stamp on 300 distractors:\n")
    print(
        common.table(["transform", "shared patterns set aside", "original first", "stamped distractors listed"], rows)
    )


def without(found: dict[str, list[Hit]], image_id: int) -> dict[str, list[Hit]]:
    return {name: [hit for hit in hits if hit.image_id != image_id] for name, hits in found.items()}


# -- calibration -------------------------------------------------------------------------------------


def fit_engine(lists: list[list[Hit]], truths: list[int], stored: int) -> EngineCalibration:
    scores, labels = [], []
    for hits, truth in zip(lists, truths):
        scores += [hit.score for hit in hits]
        labels += [hit.image_id == truth for hit in hits]
    scores, labels = np.array(scores, np.float64), np.array(labels, bool)
    higher_is_better = next((hits[0].measure.higher_is_better for hits in lists if hits), False)
    queries = len(lists)
    others = queries * (stored - 1)
    listed_originals = int(labels.sum())
    absent = np.log((queries - listed_originals + 0.5) / queries) - np.log((others - (~labels).sum()) / others)
    if listed_originals == 0:
        return EngineCalibration([0.0], [float(absent)], float(absent))
    edges = np.unique(
        np.concatenate(
            [
                np.quantile(scores[labels], np.linspace(0, 1, BINS + 1)),
                np.quantile(scores[~labels], np.linspace(0, 1, BINS + 1)),
            ]
        )
    )
    bins = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, len(edges) - 2)
    centres, ratios, weights = [], [], []
    for b in np.unique(bins):
        inside = bins == b
        positive, negative = labels[inside].sum(), (~labels[inside]).sum()
        centres.append(float(np.median(scores[inside])))
        ratios.append(np.log((positive + 0.5) / (negative + 0.5)) + np.log(stored - 1))
        weights.append(inside.sum())
    monotone = IsotonicRegression(increasing=higher_is_better).fit(centres, ratios, sample_weight=weights)
    log_ratios = np.clip(monotone.predict(centres), *LOG_RATIO_LIMITS)
    return EngineCalibration(
        [round(c, 6) for c in centres], [round(float(r), 4) for r in log_ratios], round(float(absent), 4)
    )


def evidence_matrix(lists: dict[str, list[Hit]], engines: dict[str, EngineCalibration]):
    """(candidate ids, their unweighted log ratios, one column per engine)."""
    ids = sorted({hit.image_id for hits in lists.values() for hit in hits})
    row = {image_id: r for r, image_id in enumerate(ids)}
    matrix = np.tile([fit.absent for fit in engines.values()], (len(ids), 1))
    for column, (name, fit) in enumerate(engines.items()):
        for hit in lists.get(name, []):
            matrix[row[hit.image_id], column] = np.interp(hit.score, fit.scores, fit.log_ratios)
    return ids, matrix


def fit_weights(found: list[dict], truths: list[int], engines: dict[str, EngineCalibration]) -> np.ndarray:
    """Each engine's weight: a logistic regression on the differences between the original's log ratios
    and those of the HARDEST other candidates of each query (pairwise ranking, no intercept)."""
    differences = []
    for lists, truth in zip(found, truths):
        ids, matrix = evidence_matrix(lists, engines)
        if truth not in ids:
            continue
        original = matrix[ids.index(truth)]
        others = np.delete(matrix, ids.index(truth), axis=0)
        hardest = others[np.argsort(-others.sum(axis=1))[:HARDEST]]
        differences.append(original - hardest)
    x = np.concatenate(differences)
    x, y = np.concatenate([x, -x]), np.r_[np.ones(len(x)), np.zeros(len(x))]
    model = LogisticRegression(fit_intercept=False, C=1.0, max_iter=1000).fit(x, y)
    return np.clip(model.coef_[0], 0.0, None)


def fit(found: list[dict], truths: list[int], stored: int, near: dict) -> Calibration:
    engines = {name: fit_engine([f[name] for f in found], truths, stored) for name in found[0]}
    weights = fit_weights(found, truths, engines)
    engines = {name: replace(fit, weight=round(float(w), 4)) for (name, fit), w in zip(engines.items(), weights)}
    partial = Calibration(engines, copy_at=float("inf"))
    best_absent = [fuse(without(f, truth), partial, near_duplicate=near)[0].score for f, truth in zip(found, truths)]
    # Duplicate groups judge two stored images on PAIR_ENGINES alone: their own threshold, made the same way.
    pairwise = Calibration({name: fit for name, fit in engines.items() if name in PAIR_ENGINES}, float("inf"))
    best_pair_absent = [
        fuse({e: hits for e, hits in without(f, truth).items() if e in PAIR_ENGINES}, pairwise)[0].score
        for f, truth in zip(found, truths)
    ]
    return Calibration(
        engines,
        _above(best_absent),
        {"global": SIMILAR_GLOBAL},
        pair_copy_at=_above(best_pair_absent),
    )


def _above(best_absent: list[float]) -> float:
    """The smallest score that no more than ABSENT_RATE of the absent queries' best hits reach."""
    ordered = sorted(best_absent)
    return round(float(ordered[min(len(ordered) - 1, int(np.ceil((1 - ABSENT_RATE) * len(ordered))))]) + 1e-3, 4)


# -- the report ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="write the calibration into the package")
    parser.add_argument("--search", action="store_true", help="search again (after a change to an engine)")
    args = parser.parse_args()
    names = corpus.originals()[0]
    transforms = list(corpus.TRANSFORMS)
    pairs = features.query_pairs()
    truths = [original for original, _ in pairs]
    with open_library() as library:
        stored = library.store.count()
        near = {"phash": library.engines["phash"].duplicate_threshold}
        if args.search or not SEARCHED.exists():
            SEARCHED.write_bytes(pickle.dumps(search_everything(library)))
        stamp_check(library)
    found = pickle.loads(SEARCHED.read_bytes())
    unturned = [x.pop(UNTURNED) for x in found]
    fold = np.array([original % 2 for original in truths])
    fits = {
        f: fit([x for x, g in zip(found, fold) if g != f], [t for t, g in zip(truths, fold) if g != f], stored, near)
        for f in (0, 1)
    }
    recall_1 = {
        name: np.array([bool(x[name]) and x[name][0].image_id == t for x, t in zip(found, truths)])
        for name in features.ENGINES
    }
    recall_1[UNTURNED] = np.array([bool(u) and u[0].image_id == t for u, t in zip(unturned, truths)])
    fold_weights = {f: {name: float(recall_1[name][fold != f].mean()) for name in features.ENGINES} for f in (0, 1)}
    fused_top, rrf_top, weighted_top, present_ok, absent_bad = [], [], [], [], []
    absent_verdicts = defaultdict(int)
    for x, truth, f in zip(found, truths, fold):
        calibration = fits[f]
        hits = fuse(x, calibration, near_duplicate=near)
        fused_top.append(hits[0].image_id == truth)
        present_ok.append(hits[0].image_id == truth and hits[0].verdict in STRONG)
        rrf_top.append(reciprocal_rank(x)[0] == truth)
        weighted_top.append(reciprocal_rank(x, weights=fold_weights[f])[0] == truth)
        best_absent = fuse(without(x, truth), calibration, near_duplicate=near)
        absent_verdicts[best_absent[0].verdict if best_absent else Verdict.NONE] += 1
        absent_bad.append(bool(best_absent) and best_absent[0].verdict in STRONG)
    columns = {
        **recall_1,
        "RRF k=60": np.array(rrf_top),
        "weighted RRF": np.array(weighted_top),
        "fused (calibrated)": np.array(fused_top),
    }
    by_transform = np.array([transforms.index(t) for _, t in pairs])
    rows = []
    for i, transform in enumerate(transforms + ["all"]):
        chosen = by_transform == i if transform != "all" else np.ones(len(pairs), bool)
        rows.append([transform] + [f"{columns[c][chosen].mean():.3f}" for c in columns])
    print(
        f"## Copy detection with fusion: recall@1 ({len(names)} originals, {corpus.DISTRACTORS} distractors, "
        f"{corpus.STAMPED} of them stamped; {len(pairs)} queries)\n"
    )
    print(common.table(["transform", *columns], rows))
    present_ok, absent_bad = np.array(present_ok), np.array(absent_bad)
    print("\nVerdicts (held out):\n")
    verdict_rows = []
    for i, transform in enumerate(transforms + ["all"]):
        chosen = by_transform == i if transform != "all" else np.ones(len(pairs), bool)
        verdict_rows.append([transform, f"{present_ok[chosen].mean():.3f}", f"{absent_bad[chosen].mean():.4f}"])
    print(
        common.table(["transform", "present: original first, copy or better", "absent: copy or better"], verdict_rows)
    )
    print(f"\nabsent queries' best verdicts: {dict(absent_verdicts)}")
    shipped = fit(found, truths, stored, near)
    shipped = Calibration(
        shipped.engines,
        shipped.copy_at,
        shipped.similar_within,
        shipped.pair_copy_at,
        made_by=f"bench/copy_fusion.py on {time.strftime('%Y-%m-%d')}: {len(pairs)} queries ({len(names)} originals "
        f"x {len(transforms)} transforms) against {stored} stored images (originals + {corpus.DISTRACTORS} "
        f"distractors), each engine's {PER_ENGINE} best; weights: logistic regression of each query's original "
        f"against its {HARDEST} hardest other candidates; copy_at (pair_copy_at: on {', '.join(PAIR_ENGINES)} "
        f"alone): {ABSENT_RATE:.1%} of the queries' best hits with the original taken out at or above it",
    )
    print(
        f"\ncalibration (all queries): copy_at {shipped.copy_at} (folds: {fits[0].copy_at}, {fits[1].copy_at}); "
        f"pair_copy_at {shipped.pair_copy_at}"
    )
    for name, engine in shipped.engines.items():
        points = ", ".join(f"{s:g}: {r:.1f}" for s, r in zip(engine.scores, engine.log_ratios))
        print(f"  {name}: weight {engine.weight}, absent {engine.absent}; {points}")
    print(f"\n{common.machine_markdown()}")
    if args.write:
        path = Path(__file__).resolve().parent.parent / "src/lookalike/calibration.json"
        path.write_text(json.dumps(shipped.to_json(), indent=1) + "\n")
        print(f"wrote {path}")
    common.save_json("copy_fusion", {"columns": {c: v.tolist() for c, v in columns.items()}, "pairs": pairs})


if __name__ == "__main__":
    main()
