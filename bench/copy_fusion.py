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

Calibration: `copy_calibration.py`. A hit's fused score is the sum over engines. Three settings are
compared (SETTINGS): the engines' weights fitted freely or each within [0, 1], and the latter with
the gateway's mirror look (the query's mirror image matched with the leading hits,
`gateway.mirror_look`); SHIPPED is the one written.

Verdicts: "present", every query with its original in the library (a success: the top hit is the
original with `copy` or better); "absent", the same queries with the original taken out of every
engine's list, and the local engine searched again as a library without it would search (its
candidates, and the shared patterns it sets aside, depend on what is stored): a failure is any
`copy` or better.

Run: .venv/bin/python bench/copy_fusion.py [--search] [--write]   (--search: search again, after a change to an
engine or an index; otherwise the lists of the last search are reused from the cache)
"""

import argparse
import json
import pickle
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import replace
from functools import cache
from pathlib import Path

import common
import copy_corpus as corpus
import copy_features as features
import numpy as np
from copy_calibration import ABSENT_RATE, HARDEST, PRECISE_SHARE_MISSED, fit, same_source, without

from lookalike.engines import decode_for
from lookalike.fusion import (
    PAIR_ENGINES,
    PER_ENGINE,
    Calibration,
    Verdict,
    fuse,
    reciprocal_rank,
)
from lookalike.gateway import MIRRORED, mirror_look
from lookalike.indexes import Hit, Matches
from lookalike.library import Library
from lookalike.store import ImageRecord

LIBRARY = features.FOLDER / "library"
SEARCHED = features.FOLDER / "searched.pkl"  # every query's lists, as the last --search found them
CHEAP = ["phash", "color"]
UNTURNED = "phash, no turns"  # phash with its hash and its mirror image's alone, as before
LOCAL_WITHOUT = "local, without the original"  # the local engine's list in a library without it
STRONG = (Verdict.EXACT, Verdict.NEAR_DUPLICATE, Verdict.COPY)
# Calibrations compared, by what each engine's evidence is read from (its score unless named here):
# the local engine by all its verified matches, or by the precise ones alone (a copy's are precise,
# another shot's mostly not). The shipped one is written with --write.
PRECISE = {"local": "precise_matches"}
# label: (engines read from another number than their score, weights within [0, 1], the mirror look)
SETTINGS = {
    "weights unbounded": (PRECISE, False, False),
    "weights within [0, 1]": (PRECISE, True, False),
    "and a mirror look": (PRECISE, True, True),
}
SHIPPED = "and a mirror look"
# The shipped fusion, counting as found a hit cut from the same photo as the original (`same_source`):
# a neighbouring aerial tile holding the crop's pixels, a distractor cut from the butterfly original.
SAME_PHOTO = "fused, a hit cut from the same photo counted"


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
        with stored_without(library, same_source(original)):
            lists[LOCAL_WITHOUT] = library._search("local", variants["local"], PER_ENGINE, None)
        found.append(lists)
        if n % 500 == 499:
            print(f"{n + 1}/{len(pairs)} queries, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
    return found


@contextmanager
def stored_without(library: Library, gone: frozenset[int]):
    """The local engine's index voting as if the images `gone` were not stored: their points hit nothing."""
    ranges = library.indexes["local"].ranges
    lookup = ranges.lookup

    def without_gone(points: np.ndarray) -> np.ndarray:
        images = lookup(points)
        return np.where(np.isin(images, list(gone)), -1, images)

    ranges.lookup = without_gone
    try:
        yield
    finally:
        del ranges.lookup


class MirrorLook:
    """The gateway's second look (`gateway.mirror_look`) replayed on the cache: each query's mirror
    image's local variants matched with the leading hits' stored keypoints, as `Library.mirror_matches`
    matches them."""

    def __init__(self, library: Library):
        self.library = library
        self.variants = [v[features.MIRRORED_LOCAL] for v in features.load("queries", len(features.query_pairs()))]
        self.asked = 0

    @cache
    def matches(self, query: int, leaders: tuple[int, ...]) -> dict[int, Matches]:
        self.asked += 1
        return self.library.verified_matches(MIRRORED, self.variants[query], list(leaders))

    def fused(self, query: int, found: dict[str, list[Hit]], calibration: Calibration, near: dict) -> list:
        """What `gateway.reverse_search` ranks, but the exact bytes (no query is a stored file)."""
        hits = fuse(found, calibration, near_duplicate=near)
        looked_again = mirror_look(found, hits, calibration, lambda leaders: self.matches(query, tuple(leaders)))
        return hits if looked_again is None else fuse(looked_again, calibration, near_duplicate=near)


_FOLD_FITS: dict[tuple, Calibration] = {}


def held_out_fusion(
    found, truths, absent, fold, stored, near, on: dict[str, str], bounded: bool, look: MirrorLook | None
) -> dict:
    """Each fold's queries fused with the calibration fitted on the other fold: the original first, the
    verdicts with it present and with it taken out; with `look`, after the gateway's second look."""
    fits = {}
    for f in (0, 1):
        key = (f, tuple(sorted(on.items())), bounded)  # settings that differ only by the look share their fits
        if key not in _FOLD_FITS:
            other = [g != f for g in fold]
            chosen = [[x for x, o in zip(lists, other) if o] for lists in (found, truths, absent)]
            _FOLD_FITS[key] = fit(*chosen, stored, near, on, bounded)
        fits[f] = _FOLD_FITS[key]
    result = {"fits": fits, "top": [], "top_same_source": [], "present_ok": [], "absent_bad": []}
    result["absent_verdicts"] = defaultdict(int)

    def fused(query: int, lists: dict[str, list[Hit]], calibration: Calibration) -> list:
        return look.fused(query, lists, calibration, near) if look else fuse(lists, calibration, near_duplicate=near)

    for query, (x, truth, f) in enumerate(zip(found, truths, fold)):
        hits = fused(query, x, fits[f])
        result["top"].append(hits[0].image_id == truth)
        result["top_same_source"].append(hits[0].image_id in same_source(truth))
        result["present_ok"].append(hits[0].image_id == truth and hits[0].verdict in STRONG)
        best_absent = fused(query, absent[query], fits[f])
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
    absent = [without(x, t, {"local": x.pop(LOCAL_WITHOUT)}) for x, t in zip(found, truths)]
    fold = np.array([original % 2 for original in truths])
    recall_1 = {
        name: np.array([bool(x[name]) and x[name][0].image_id == t for x, t in zip(found, truths)])
        for name in features.ENGINES
    }
    recall_1[UNTURNED] = np.array([bool(u) and u[0].image_id == t for u, t in zip(unturned, truths)])
    fold_weights = {f: {name: float(recall_1[name][fold != f].mean()) for name in features.ENGINES} for f in (0, 1)}
    rrf_top = [reciprocal_rank(x)[0] == t for x, t in zip(found, truths)]
    weighted_top = [reciprocal_rank(x, weights=fold_weights[f])[0] == t for x, t, f in zip(found, truths, fold)]
    with open_library() as library:
        look = MirrorLook(library)
        held_out = {
            label: held_out_fusion(found, truths, absent, fold, stored, near, on, bounded, look if looks else None)
            for label, (on, bounded, looks) in SETTINGS.items()
        }
        print(f"\nthe mirror look matched {look.asked} sets of leaders", file=sys.stderr)
    columns = {
        **recall_1,
        "RRF k=60": np.array(rrf_top),
        "weighted RRF": np.array(weighted_top),
        **{f"fused, {label}": np.array(result["top"]) for label, result in held_out.items()},
        SAME_PHOTO: np.array(held_out[SHIPPED]["top_same_source"]),
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
    shipped = fit(found, truths, absent, stored, near, *SETTINGS[SHIPPED][:2])
    shipped = replace(
        shipped,
        made_by=f"bench/copy_fusion.py on {time.strftime('%Y-%m-%d')}: {len(pairs)} queries ({len(names)} originals "
        f"x {len(transforms)} transforms) against {stored} stored images (originals + {corpus.DISTRACTORS} "
        f"distractors), each engine's {PER_ENGINE} best; weights: logistic regression of each query's original "
        f"against its {HARDEST} hardest other candidates, each within [0, 1]; copy_at (pair_copy_at: on "
        f"{', '.join(PAIR_ENGINES)} alone): {ABSENT_RATE:.1%} of the queries' best hits with the original taken "
        f"out at or above it; local by its precise matches: precise_share the {PRECISE_SHARE_MISSED:.0%} "
        f"quantile of the originals' shares, precise_copy_at reached by {ABSENT_RATE / 2:.2%} of the queries "
        f"with the original taken out",
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
