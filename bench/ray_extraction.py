"""`lookalike index` with its local worker pool against `--ray` on the same cores, in the same run.

Folder: the test photos at 4000x3000 (`common.gallery_jpegs`), each twice under two names (COPIES), so
92 files of 12 MP. Every default engine, into a fresh data directory each run; both passes (the fast
engines, then local and text). The local pool has one worker process per core; Ray, an instance of
this machine's own started once before the runs (`ray.init(num_cpus=cores)`: what a cluster that is
already up costs, not its start, which is timed apart), one actor per CPU. The two take turns, ROUNDS
times. Wall-clock seconds of `indexer.run` (worker start and model loading included) and images/s.

Run: .venv/bin/python bench/ray_extraction.py
"""

import os
import statistics
import tempfile
import time
from pathlib import Path

import common
import ray

from lookalike import indexer
from lookalike.config import Settings
from lookalike.library import Library

ROUNDS = 2
COPIES = 2


def folder_of_photos(folder: Path) -> int:
    photos = common.gallery_jpegs()
    for copy in range(COPIES):
        for name, data in photos.items():
            (folder / f"{name}-{copy}.jpg").write_bytes(data)
    return COPIES * len(photos)


def index(folder: Path, data_dir: Path, ray_address: str | None) -> float:
    with Library.from_settings(Settings(data_dir=data_dir)) as library:
        library.prepare()  # the models exported before timing, as a second run finds them
        started = time.perf_counter()
        report = indexer.run(library, folder, ray=ray_address)
        seconds = time.perf_counter() - started
        assert not report.failed, report.failed
    return seconds


def main() -> None:
    cores = os.cpu_count()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "photos"
        folder.mkdir()
        files = folder_of_photos(folder)
        started = time.perf_counter()
        ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - started
        found = {"local pool": [], "ray": []}
        for round_ in range(ROUNDS):
            for name in ("local pool", "ray") if round_ % 2 == 0 else ("ray", "local pool"):
                data_dir = Path(tmp) / f"{name}-{round_}"
                found[name].append(index(folder, data_dir, "auto" if name == "ray" else None))
                print(f"{name}: {found[name][-1]:.1f} s", flush=True)
        ray.shutdown()
    result = {"machine": common.machine(), "files": files, "cores": cores, "ray_start_s": ray_start, "seconds": found}
    print(common.save_json("ray_extraction", result))
    rows = [
        [name, ", ".join(f"{s:.1f}" for s in runs), f"{files / statistics.median(runs):.2f}"]
        for name, runs in found.items()
    ]
    print(common.table(["workers", "seconds, each round", "images/s (median)"], rows))
    ratios = [r / p for r, p in zip(found["ray"], found["local pool"])]
    print(f"ray / local pool, each round: {', '.join(f'{r:.3f}' for r in ratios)}; Ray's start: {ray_start:.1f} s")


if __name__ == "__main__":
    main()
