"""Precise matches: how a copy's verified matches differ from another shot's of the same scene.

For each original of copy_corpus.py and each transform (but the mirrored ones, which the local engine
does not match unmirrored; odd originals only the crops, the 10-degree turn, the white border and the
screenshot), the copy's local features are verified (`LocalFeatures.verify`) against its original and
against the 8 originals listed next to it (the multi-view series of mvtb sit together: chessboard
shots, video frames, a building and a campus from several places, aerial mosaic tiles). Reported: the
share of the verified matches (homography inliers) that are precise (within PRECISE pixels of one
similarity transform), for copies against their originals, for other shots (pairs of different
originals with at least 20 matches) and for the aerial mosaic tiles (cut from one photo).

Run: .venv/bin/python bench/precise_matches.py   (about 15 min on 2 cores)
"""

import io
from collections import defaultdict

import common
import copy_corpus as corpus
import cv2
import numpy as np
from PIL import Image

from lookalike.engines import create_engine
from lookalike.engines.local import PRECISE

NEIGHBOURS = 4  # originals on each side verified against each copy
STRONG = 20  # matches that make a pair of different originals a hard one
FEW_TRANSFORMS = ("crop-30%", "crop-50%", "rotate-10", "border-white", "screenshot")


def main() -> None:
    cv2.setNumThreads(1)
    engine = create_engine("local")
    names, stored = corpus.originals()
    originals = [engine.extract(Image.open(io.BytesIO(data)).convert("RGB")) for data in stored]
    copies, other_shots, tiles = defaultdict(list), [], []
    for i, name in enumerate(names):
        for transform in corpus.TRANSFORMS:
            if "mirror" in transform or (i % 2 and transform not in FEW_TRANSFORMS):
                continue
            query = engine.extract(Image.open(io.BytesIO(corpus.query(i, transform))).convert("RGB"))
            for j in range(max(0, i - NEIGHBOURS), min(len(names), i + NEIGHBOURS + 1)):
                matches = engine.verify(query, originals[j])
                if i == j:
                    copies[transform].append(matches)
                elif matches.count >= STRONG:
                    both_tiles = "mosaic/aerial" in name and "mosaic/aerial" in names[j]
                    (tiles if both_tiles else other_shots).append(matches)
        print(f"{i + 1}/{len(names)} originals", flush=True)

    def share(found) -> str:
        counts = np.array([(m.count, m.precise) for m in found]).reshape(-1, 2)
        return f"{counts[:, 1].sum() / max(1, counts[:, 0].sum()):.3f}"

    def listed(found) -> str:
        return f"{sum(m.count > 0 for m in found)} of {len(found)}"

    print(f"\n## Precise matches (within {PRECISE} px of one similarity transform)\n")
    rows = [[t, listed(found), share([m for m in found if m.count])] for t, found in copies.items()]
    rows.append(
        ["every copy", listed(sum(copies.values(), [])), share([m for f in copies.values() for m in f if m.count])]
    )
    rows.append([f"other shots, {STRONG}+ matches", len(other_shots), share(other_shots)])
    rows.append([f"aerial mosaic tiles, {STRONG}+ matches", len(tiles), share(tiles)])
    print(common.table(["pairs", "verified", "precise share of the matches"], rows))
    print(f"\n{common.machine_markdown()}")


if __name__ == "__main__":
    main()
