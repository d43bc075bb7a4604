"""What making a thumbnail at add time costs: `Library.add` of 12-MP JPEGs with this commit (which
makes and stores a thumbnail from the engines' decode) against a commit before thumbnails, in the same
run, each in its own process, alternating ROUNDS times.

Photos: the test photos re-encoded at 4000x3000 (`common.gallery_jpegs`), added with the fast engines
(phash, color, global, image_text, tags: the ones an add makes at once with defer_slow, where a
thumbnail's share is largest), after one warm-up add. Reports seconds per image and store bytes per
image for each.

Run: git worktree add /tmp/prev <commit before thumbnails>
     .venv/bin/python bench/thumbnail_cost.py --before /tmp/prev
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import common

ROUNDS = 3
ENGINES = ["phash", "color", "global", "image_text", "tags"]
CHILD = """
import json, sys, time
from pathlib import Path
from lookalike.library import Library
photos = sorted(Path(sys.argv[1]).glob("*.jpg"))
with Library(Path(sys.argv[2]), json.loads(sys.argv[3])) as library:
    library.add(10**6, photos[0].read_bytes())  # the models load here
    started = time.perf_counter()
    for image_id, path in enumerate(photos):
        library.add(image_id, path.read_bytes(), path.name)
    seconds = time.perf_counter() - started
    print(json.dumps({"per_image_s": seconds / len(photos), "store_bytes": library.store.disk_bytes(),
                      "images": len(photos)}))
"""


def run(source: Path | None, photos: Path) -> dict:
    env = dict(os.environ)
    if source is not None:
        env["PYTHONPATH"] = str(source / "src")
    with tempfile.TemporaryDirectory() as data_dir:
        command = [sys.executable, "-c", CHILD, str(photos), data_dir, json.dumps(ENGINES)]
        return json.loads(subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", type=Path, required=True, help="a worktree of a commit before thumbnails")
    args = parser.parse_args()
    common.gallery_jpegs()
    photos = common.CACHE_DIR / "gallery"
    found = {"before": [], "after": []}
    for _ in range(ROUNDS):
        found["before"].append(run(args.before, photos))
        found["after"].append(run(None, photos))
    result = {"machine": common.machine(), "engines": ENGINES, "rounds": found}
    print(common.save_json("thumbnail_cost", result))
    rows = []
    for name, runs in found.items():
        seconds = [r["per_image_s"] * 1000 for r in runs]
        rows.append(
            [name, ", ".join(f"{s:.0f}" for s in seconds), f"{runs[0]['store_bytes'] / runs[0]['images']:,.0f}"]
        )
    print(common.table(["commit", "ms per 12-MP add, each round", "store bytes per image"], rows))
    ratios = [a["per_image_s"] / b["per_image_s"] for a, b in zip(found["after"], found["before"])]
    print("after / before, each round: " + ", ".join(f"{r:.3f}" for r in ratios))


if __name__ == "__main__":
    main()
