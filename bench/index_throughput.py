"""`lookalike index DIR` end to end, the default engines (all six), on all cores: images/s.

The folder holds 200 gallery-sized JPEGs (4000x3000 or 3000x4000, quality 90): the 46 test photos
in 5 variants (as is, mirrored, 90% centre crop resized back, 15% brighter, rotated 180 degrees),
cycled to 200 files. They are generated once (in parallel) into
bench/results/cache/index_folder_<files> and reused; they are in the page cache when timed, so this
measures CPU, not disk.

Each run is the real CLI as a subprocess, `lookalike index DIR --data-dir TMP` with a fresh data
dir, timed wall-clock from start to exit (process start-up, spawn of the worker pool, decode, features,
LMDB commits and saving the FAISS indexes included). Also timed: the same command again on the
filled data dir (incremental: nothing changed), an empty folder (the fixed start-up cost), and a
folder of 5x the files (hard links to the same JPEGs under 5 sub-folders: other paths, so all are
decoded again) whose extra time over the small folder gives the marginal (steady-state) rate.
The engines are the CLI's defaults (LOOKALIKE_ENGINES picks others). Set LOOKALIKE_MODELS_DIR to a
folder that holds the exported models: otherwise each fresh data dir exports them again, and that
is timed.

Run: .venv/bin/python bench/index_throughput.py [--files 200] [--repeat 3]
"""

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageEnhance, ImageOps

import common

LOOKALIKE = Path(sys.executable).parent / "lookalike"
VARIANTS = ["original", "mirror", "crop90", "bright", "rot180"]


def make_variant(job: tuple[Path, bytes, str]) -> None:
    path, data, variant = job
    image = Image.open(io.BytesIO(data)).convert("RGB")
    if variant == "mirror":
        image = ImageOps.mirror(image)
    elif variant == "crop90":
        width, height = image.size
        dx, dy = round(width * 0.05), round(height * 0.05)
        image = image.crop((dx, dy, width - dx, height - dy)).resize((width, height), Image.Resampling.BICUBIC)
    elif variant == "bright":
        image = ImageEnhance.Brightness(image).enhance(1.15)
    elif variant == "rot180":
        image = image.transpose(Image.Transpose.ROTATE_180)
    path.write_bytes(common.jpeg(image))


def index_folder(files: int) -> Path:
    folder = common.CACHE_DIR / f"index_folder_{files}"
    if folder.is_dir() and len(list(folder.glob("*.jpg"))) == files:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    photos = list(common.gallery_jpegs().items())
    jobs = []
    for i in range(files):
        name, data = photos[i % len(photos)]
        variant = VARIANTS[(i // len(photos)) % len(VARIANTS)]
        jobs.append((folder / f"{i:04d}-{name}-{variant}.jpg", data, variant))
    with ProcessPoolExecutor() as pool:
        list(pool.map(make_variant, jobs))
    return folder


def run_index(folder: Path, data_dir: Path, workers: int | None = None) -> tuple[float, str]:
    command = [str(LOOKALIKE), "index", str(folder), "--data-dir", str(data_dir)]
    if workers:
        command += ["--workers", str(workers)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    summary = [line for line in done.stderr.splitlines() if line.startswith("indexed")]
    return seconds, summary[-1] if summary else ""


def stored(data_dir: Path) -> dict:
    out = subprocess.run([str(LOOKALIKE), "stats", "--data-dir", str(data_dir)], capture_output=True, text=True)
    return json.loads(out.stdout)["engines"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    folder = index_folder(args.files)
    megabytes = sum(p.stat().st_size for p in folder.glob("*.jpg")) / 2**20
    for path in folder.glob("*.jpg"):  # warm the page cache
        path.read_bytes()

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        empty = Path(tmp, "empty")
        empty.mkdir()
        big = Path(tmp, "big")
        for copy in range(5):
            Path(big, str(copy)).mkdir(parents=True)
            for path in folder.glob("*.jpg"):
                try:
                    os.link(path, big / str(copy) / path.name)
                except OSError:  # another file system: copy instead
                    shutil.copyfile(path, big / str(copy) / path.name)
        rows, first = [], {}
        cases = [(folder, args.files, None), (folder, args.files, 1), (big, 5 * args.files, None)]
        for number, (directory, files, workers) in enumerate(cases):
            full, again = [], []
            for r in range(args.repeat):
                data_dir = Path(tmp, f"data-{number}-{r}")
                seconds, summary = run_index(directory, data_dir, workers)
                full.append(seconds)
                assert summary.startswith(f"indexed {files},"), summary
                counts = stored(data_dir)
                # Every engine stored and indexed every file (local also reports its descriptors).
                assert all(c["features"] == c["indexed"] == files for c in counts.values()), counts
                seconds, summary = run_index(directory, data_dir, workers)
                again.append(seconds)
                assert summary.startswith(f"indexed 0, unchanged {files}"), summary
            label = f"{workers or os.cpu_count()} worker{'s' if workers != 1 else ''}"
            first[(files, workers)] = common.median(full)
            rows.append([files, label, f"{first[files, workers]:.2f}", f"{files / first[files, workers]:.1f}",
                         f"{common.median(again):.2f}"])
            results[f"{files} files, {label}"] = {"first_run_s": full, "second_run_s": again}
        startup = [run_index(empty, Path(tmp, f"data-empty-{r}"))[0] for r in range(args.repeat)]
        results["empty_folder_s"] = startup

    # The engines named are those of the last data dir checked: what the CLI indexed with.
    print(f"## `lookalike index` end to end ({args.files} JPEGs, 4000x3000 q90, {megabytes:.0f} MiB; "
          f"{', '.join(counts)}; median of {args.repeat})\n")
    print(common.table(["files", "workers", "first run, s", "images/s", "second run (nothing changed), s"], rows))
    marginal = 4 * args.files / (first[5 * args.files, None] - first[args.files, None])
    results["marginal_images_per_s"] = marginal
    print(f"\nMarginal rate, all cores ({4 * args.files} extra files / extra time): {marginal:.1f} images/s. "
          f"Start-up alone (`lookalike index` of an empty folder, fresh data dir): {common.median(startup):.2f} s.")
    print(f"\n{common.machine_markdown()}")
    common.save_json("index_throughput", {"files": args.files, "megabytes": megabytes, "results": results})


if __name__ == "__main__":
    main()
