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
others' rates of not being listed. A hit's fused score is the sum over engines. Two calibrations
are compared (SETTINGS): the local engine's evidence read from all its verified matches, and from
its precise matches alone; SHIPPED is the one written.

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
from functools import cache
from pathlib import Path

import common
import copy_corpus as corpus
import copy_features as features
import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from lookalike.engines import decode_for
from lookalike.fusion import (
    PAIR_ENGINES,
    PER_ENGINE,
    Calibration,
    EngineCalibration,
    Verdict,
    fuse,
    reciprocal_rank,
    verified,
)
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
# Calibrations compared, by what each engine's evidence is read from (its score unless named here):
# the local engine by all its verified matches, or by the precise ones alone (a copy's are precise,
# another shot's mostly not). The shipped one is written with --write.
SETTINGS = {"local by matches": {}, "local by precise matches": {"local": "precise_matches"}}
SHIPPED = "local by precise matches"
# The share of the originals' local hits that may have fewer precise matches than `precise_share`.
PRECISE_SHARE_MISSED = 0.02
SAME_SOURCE = ("mvtb/mosaic/aerial",)  # originals cut from one photo, by name
SAME_AS_SOURCE = {"mvtb/butterfly.jpg": "butterfly"}  # originals that are a distractor source photo


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


def held_out_fusion(found, truths, fold, stored, near, on: dict[str, str]) -> dict:
    """Each fold's queries fused with the calibration fitted on the other fold: the original first, the
    verdicts with it present and with it taken out."""
    fits = {}
    for f in (0, 1):
        other = [g != f for g in fold]
        fits[f] = fit([x for x, o in zip(found, other) if o], [t for t, o in zip(truths, other) if o], stored, near, on)
    result = {"fits": fits, "top": [], "present_ok": [], "absent_bad": [], "absent_verdicts": defaultdict(int)}
    for x, truth, f in zip(found, truths, fold):
        hits = fuse(x, fits[f], near_duplicate=near)
        result["top"].append(hits[0].image_id == truth)
        result["present_ok"].append(hits[0].image_id == truth and hits[0].verdict in STRONG)
        best_absent = fuse(without(x, truth), fits[f], near_duplicate=near)
        result["absent_verdicts"][best_absent[0].verdict.value if best_absent else "none"] += 1
        result["absent_bad"].append(bool(best_absent) and best_absent[0].verdict in STRONG)
    return result


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


def without(found: dict[str, list[Hit]], original: int) -> dict[str, list[Hit]]:
    """The lists as a library without the original would give them: without it, and without the other
    originals cut from the same photo (`same_source`)."""
    gone = same_source(original)
    return {name: [hit for hit in hits if hit.image_id not in gone] for name, hits in found.items()}


@cache
def same_source(original: int) -> frozenset[int]:
    """The original and the stored images that share its pixels (checked by the local engine's precise
    matches, all of theirs precise): the aerial mosaic tiles are cut from one photo (aerialphoto), so a
    library holding one tile holds part of the next; OpenCV's butterfly sample, a distractor source, is
    the Machine Vision Toolbox's butterfly, so the distractors cut from it are crops of that original."""
    names = corpus.originals()[0]
    family = next((prefix for prefix in SAME_SOURCE if names[original].startswith(prefix)), None)
    found = {original} if family is None else {i for i, name in enumerate(names) if name.startswith(family)}
    if names[original] in SAME_AS_SOURCE:
        found |= {len(names) + index for index in corpus.distractors_from(SAME_AS_SOURCE[names[original]])}
    return frozenset(found)


# -- calibration -------------------------------------------------------------------------------------


def fit_engine(lists: list[list[Hit]], truths: list[int], stored: int, on: str = "score") -> EngineCalibration:
    scores, labels = [], []
    for hits, truth in zip(lists, truths):
        scores += [getattr(hit, on) for hit in hits]
        labels += [hit.image_id == truth for hit in hits]
    scores, labels = np.array(scores, np.float64), np.array(labels, bool)
    higher_is_better = next((hits[0].measure.higher_is_better for hits in lists if hits), False)
    queries = len(lists)
    others = queries * (stored - 1)
    listed_originals = int(labels.sum())
    absent = np.log((queries - listed_originals + 0.5) / queries) - np.log((others - (~labels).sum()) / others)
    if listed_originals == 0:
        return EngineCalibration([0.0], [float(absent)], float(absent), on=on)
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
        [round(c, 6) for c in centres], [round(float(r), 4) for r in log_ratios], round(float(absent), 4), on=on
    )


def evidence_matrix(lists: dict[str, list[Hit]], engines: dict[str, EngineCalibration]):
    """(candidate ids, their unweighted log ratios, one column per engine)."""
    ids = sorted({hit.image_id for hits in lists.values() for hit in hits})
    row = {image_id: r for r, image_id in enumerate(ids)}
    matrix = np.tile([fit.absent for fit in engines.values()], (len(ids), 1))
    for column, (name, fit) in enumerate(engines.items()):
        for hit in lists.get(name, []):
            matrix[row[hit.image_id], column] = np.interp(getattr(hit, fit.on), fit.scores, fit.log_ratios)
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


def fit(found: list[dict], truths: list[int], stored: int, near: dict, on: dict[str, str]) -> Calibration:
    """`on`: the engines calibrated on another number of their hits than the score (`EngineCalibration.on`)."""
    engines = {name: fit_engine([f[name] for f in found], truths, stored, on.get(name, "score")) for name in found[0]}
    weights = fit_weights(found, truths, engines)
    engines = {name: replace(fit, weight=round(float(w), 4)) for (name, fit), w in zip(engines.items(), weights)}
    precise = {}
    if "local" in on:  # the rules on the precise matches alone (Calibration.says_copy)
        shares = [h.precise_matches / h.score for f, t in zip(found, truths) for h in f["local"] if h.image_id == t]
        precise["precise_share"] = round(float(np.quantile(shares, PRECISE_SHARE_MISSED)), 4)
        best_precise = [
            max((h.precise_matches for h in without(f, t)["local"]), default=0) for f, t in zip(found, truths)
        ]
        precise["precise_copy_at"] = _above(best_precise, ABSENT_RATE / 2)
    partial = Calibration(engines, float("inf"), **precise)
    copy_at = _copy_at([fuse(without(f, t), partial, near_duplicate=near) for f, t in zip(found, truths)], partial)
    # Duplicate groups judge two stored images on PAIR_ENGINES alone: their own threshold, made the same way.
    pairwise = replace(partial, engines={name: fit for name, fit in engines.items() if name in PAIR_ENGINES})
    pair_lists = [{e: hits for e, hits in without(f, t).items() if e in PAIR_ENGINES} for f, t in zip(found, truths)]
    pair_copy_at = _copy_at([fuse(lists, pairwise) for lists in pair_lists], pairwise)
    return replace(partial, copy_at=copy_at, similar_within={"global": SIMILAR_GLOBAL}, pair_copy_at=pair_copy_at)


def _copy_at(absent: list[list], calibration: Calibration) -> float:
    """The smallest fused score at which no more than ABSENT_RATE of the absent queries' best hits are
    copies, with the rules on precise matches as `calibration` has them."""
    scores = []
    for hits in absent:
        found = verified(hits[0].evidence) if hits else []
        if hits and calibration.says_copy(-np.inf, 0.0, found):
            scores.append(np.inf)  # a copy by its precise matches alone, whatever the threshold
        elif not hits or not calibration.says_copy(np.inf, 0.0, found):
            scores.append(-np.inf)  # nothing found, or another shot by its precise matches: never a copy
        else:
            scores.append(hits[0].score)
    return _above(scores, ABSENT_RATE)


def _above(best_absent: list[float], rate: float) -> float:
    """The smallest score that no more than `rate` of the absent queries' best reach."""
    ordered = sorted(best_absent)
    allowed = int(np.floor(rate * len(ordered)))  # reaching it: the `allowed` largest at most
    value = ordered[len(ordered) - allowed - 1] if allowed < len(ordered) else ordered[0]
    return round(float(value) + 1e-3, 4) if np.isfinite(value) else float(value)


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
    recall_1 = {
        name: np.array([bool(x[name]) and x[name][0].image_id == t for x, t in zip(found, truths)])
        for name in features.ENGINES
    }
    recall_1[UNTURNED] = np.array([bool(u) and u[0].image_id == t for u, t in zip(unturned, truths)])
    fold_weights = {f: {name: float(recall_1[name][fold != f].mean()) for name in features.ENGINES} for f in (0, 1)}
    rrf_top = [reciprocal_rank(x)[0] == t for x, t in zip(found, truths)]
    weighted_top = [reciprocal_rank(x, weights=fold_weights[f])[0] == t for x, t, f in zip(found, truths, fold)]
    held_out = {label: held_out_fusion(found, truths, fold, stored, near, on) for label, on in SETTINGS.items()}
    columns = {
        **recall_1,
        "RRF k=60": np.array(rrf_top),
        "weighted RRF": np.array(weighted_top),
        **{f"fused, {label}": np.array(result["top"]) for label, result in held_out.items()},
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
    print("\nVerdicts (held out), per calibration:\n")
    verdict_rows = []
    for i, transform in enumerate(transforms + ["all"]):
        chosen = by_transform == i if transform != "all" else np.ones(len(pairs), bool)
        verdict_rows.append(
            [transform]
            + [
                f"{np.mean(np.array(result[key])[chosen]):.{digits}f}"
                for result in held_out.values()
                for key, digits in (("present_ok", 3), ("absent_bad", 4))
            ]
        )
    verdicts = ("present, copy or better", "absent, copy or better")
    headers = [f"{label}: {what}" for label in held_out for what in verdicts]
    print(common.table(["transform", *headers], verdict_rows))
    for label, result in held_out.items():
        print(f"\n{label}: absent queries' best verdicts: {result['absent_verdicts']}")
        print(
            f"{label}: per fold: "
            + "; ".join(
                f"copy_at {c.copy_at}, precise_copy_at {c.precise_copy_at}, precise_share {c.precise_share}"
                for c in result["fits"].values()
            )
        )
    shipped = fit(found, truths, stored, near, SETTINGS[SHIPPED])
    shipped = replace(
        shipped,
        made_by=f"bench/copy_fusion.py on {time.strftime('%Y-%m-%d')}: {len(pairs)} queries ({len(names)} originals "
        f"x {len(transforms)} transforms) against {stored} stored images (originals + {corpus.DISTRACTORS} "
        f"distractors), each engine's {PER_ENGINE} best; weights: logistic regression of each query's original "
        f"against its {HARDEST} hardest other candidates; copy_at (pair_copy_at: on {', '.join(PAIR_ENGINES)} "
        f"alone): {ABSENT_RATE:.1%} of the queries' best hits with the original taken out at or above it; local "
        f"by its precise matches: precise_share the {PRECISE_SHARE_MISSED:.0%} quantile of the originals' shares, "
        f"precise_copy_at reached by {ABSENT_RATE / 2:.2%} of the queries with the original taken out",
    )
    print(
        f"\ncalibration (all queries, {SHIPPED}): copy_at {shipped.copy_at}; pair_copy_at {shipped.pair_copy_at}; "
        f"precise_copy_at {shipped.precise_copy_at}; precise_share {shipped.precise_share}"
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
