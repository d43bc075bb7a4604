"""Duplicate tiers over a whole library: pair precision per tier, multi-view series, and the cost of
the phash tier as the library grows.

Library (phash, color, global, local; features from copy_features.py's cache, phash and color made
from the bytes): the originals of copy_corpus.py, every transformed copy of each (17 per original), and the
5,200 distractors. `duplicate_groups` at tier `similar`; each pair in a group is judged by its own
tier. A pair of an original (or a copy of it) with a copy of the same original is right; a pair of
two different originals, or with a distractor, is wrong; pairs of two distractors are left out (they
are cut from the same 35 source photos, so some are copies of one another and there is no truth).
Multi-view series: mvtb originals named like one another but for a trailing number or l/r (flowers1
.. flowers9, building2-1 .. -3, rocks2-l/-r, eiffel-1/-2, ...): the tier of each pair of frames.

Scaling: the phash tier alone (`_Features.hash_neighbours`: every hash and its mirror image's, by
locality-sensitive hashing) on N random 576-bit hashes, 1% of them planted as near-duplicates of
another (20 bits flipped), N = 10k, 100k, 1M: seconds, the planted pairs found, and seconds / (N log2 N)
against the 10k run.

Run: .venv/bin/python bench/duplicate_tiers.py [--scaling-only]
"""

import argparse
import re
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import common
import copy_corpus as corpus
import copy_features as features
import numpy as np

from lookalike.duplicates import TIERS, _Features, duplicate_groups
from lookalike.engines import decode_for
from lookalike.fusion import Verdict
from lookalike.library import Library
from lookalike.store import ImageRecord

ENGINES = ["phash", "color", "global", "local"]


def series_of(name: str) -> str | None:
    if not name.startswith("mvtb/"):
        return None
    stem = re.sub(r"([-_.]?(\d+|[lr]))$", "", Path(name).stem)
    return f"{str(Path(name).parent).removesuffix('/holdout')}/{stem}" if stem else None


def build(folder: Path) -> tuple[Library, dict[int, int]]:
    """The library, and each stored image's original (-1: a distractor)."""
    library = Library(folder, ENGINES, max_pixels=features.MAX_PIXELS)
    names = corpus.originals()[0]
    stored = features.load("stored", corpus.stored_images())
    source = {}
    batch = []
    for image_id, feature in enumerate(stored):
        batch.append(
            (
                ImageRecord(image_id, names[image_id] if image_id < len(names) else f"d{image_id}"),
                {name: feature[name] for name in ENGINES},
            )
        )
        source[image_id] = image_id if image_id < len(names) else -1
    library.add_many(batch)
    pairs = features.query_pairs()
    queries = features.load("queries", len(pairs))
    cheap = [library.engines[name] for name in ("phash", "color")]
    batch = []
    for n, ((original, transform), variants) in enumerate(zip(pairs, queries)):
        image_id = 100_000 + n
        images = decode_for(cheap, corpus.query(original, transform), features.MAX_PIXELS)
        feature = {e.name: e.extract(images[e.name]) for e in cheap}
        feature |= {"global": variants["global"][0], "local": variants["local"][0]}
        batch.append((ImageRecord(image_id, f"{names[original]} {transform}"), feature))
        source[image_id] = original
        if len(batch) == 500:
            library.add_many(batch)
            batch = []
    library.add_many(batch)
    return library, source


def quality() -> None:
    names = corpus.originals()[0]
    with tempfile.TemporaryDirectory() as tmp:
        library, source = build(Path(tmp))
        started = time.monotonic()
        groups = duplicate_groups(library, Verdict.SIMILAR)
        seconds = time.monotonic() - started
        stored = library.store.count()
        library.close()
    right, wrong = Counter(), Counter()
    series_tiers = Counter()
    wrong_examples = defaultdict(list)
    for group in groups:
        for pair in group.pairs:
            a, b = source[pair.first], source[pair.second]
            if a == -1 and b == -1:
                continue
            if a == b:
                right[pair.tier] += 1
            else:
                wrong[pair.tier] += 1
                wrong_examples[pair.tier].append((pair.first, pair.second, pair.scores, pair.precise_matches))
                if a >= 0 and b >= 0 and series_of(names[a]) and series_of(names[a]) == series_of(names[b]):
                    series_tiers[pair.tier] += 1
    print(
        f"## Duplicate tiers ({stored} images: {len(names)} originals, {stored - len(names) - corpus.DISTRACTORS} "
        f"copies, {corpus.DISTRACTORS} distractors; `duplicate_groups(tier=similar)` in {seconds:.1f} s)\n"
    )
    rows = []
    for tier in TIERS[1:]:
        total = right[tier] + wrong[tier]
        rows.append([tier.value, right[tier], wrong[tier], f"{right[tier] / total:.4f}" if total else "-"])
    print(common.table(["tier", "right pairs", "wrong pairs", "pair precision"], rows))
    frames = defaultdict(list)
    for i, name in enumerate(names):
        if series_of(name):
            frames[series_of(name)].append(i)
    frame_pairs = sum(len(v) * (len(v) - 1) // 2 for v in frames.values() if len(v) > 1)
    print(
        f"\nMulti-view series: {frame_pairs} pairs of frames of one series (with copies: every pair of "
        f"images made from two frames): {dict(series_tiers)}; the rest are in no group."
    )
    transforms = list(corpus.TRANSFORMS)
    for tier, examples in wrong_examples.items():
        edits = Counter(
            " & ".join(
                sorted(transforms[(i - 100_000) % len(transforms)] if i >= 100_000 else "original" for i in pair[:2])
            )
            for pair in examples
        )
        print(f"wrong {tier}: {len(examples)} pairs, by the edits on either side: {edits.most_common(6)}")
        print(f"  e.g. {examples[:3]}")


def scaling() -> None:
    rng = np.random.default_rng(common.SEED)
    rows, base = [], None
    for n in (10_000, 100_000, 1_000_000):
        hashes = rng.integers(0, 256, (n, 72), dtype=np.uint8)
        planted = rng.choice(n, n // 100, replace=False)
        half = len(planted) // 2
        flips = np.zeros((half, 576), bool)
        for row in flips:
            row[rng.choice(576, 20, replace=False)] = True
        hashes[planted[:half]] = hashes[planted[half : 2 * half]] ^ np.packbits(flips, axis=1)
        found = _Features.__new__(_Features)
        found.ids, found.hashes = np.arange(n, dtype=np.int64), hashes
        started = time.monotonic()
        pairs = found.hash_neighbours(64)
        seconds = time.monotonic() - started
        cost = seconds / (n * np.log2(n))
        base = base or cost
        planted_pairs = {(int(min(a, b)), int(max(a, b))) for a, b in zip(planted[:half], planted[half : 2 * half])}
        rows.append(
            [f"{n:,}", f"{seconds:.1f}", f"{len(planted_pairs & pairs)} of {half}", len(pairs), f"{cost / base:.2f}"]
        )
        print(rows[-1], flush=True)
    print("\n## The phash tier's cost\n")
    headers = ["hashes", "seconds", "planted pairs found", "pairs within 64 bits", "seconds / (N log N), against 10k"]
    print(common.table(headers, rows))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scaling-only", action="store_true")
    args = parser.parse_args()
    if not args.scaling_only:
        quality()
    scaling()
    print(f"\n{common.machine_markdown()}")


if __name__ == "__main__":
    main()
