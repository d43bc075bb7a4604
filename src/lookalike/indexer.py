"""Bulk indexing of a folder: reader -> worker processes (decode + features) -> one batched writer.

Each batch commits in one LMDB transaction, so an interrupted or killed run loses at most the batch
in flight, and the next run skips every file already stored with the same size and mtime.
"""

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import worker
from .errors import LookalikeError
from .library import Library, check_file_name
from .store import ImageRecord

IMAGE_SUFFIXES = set(".jpg .jpeg .jpe .png .webp .gif .bmp .tif .tiff .heic .heif .avif".split())
BATCH_SIZE = 256
BATCH_SECONDS = 2.0
MODEL_BATCH = 8  # images a worker decodes and runs through the neural models together


@dataclass(frozen=True)
class Job:
    path: Path
    image_id: int
    size: int
    mtime_ns: int


@dataclass
class Plan:
    jobs: list[Job] = field(default_factory=list)
    unchanged: int = 0
    missing: list[int] = field(default_factory=list)
    # Files whose path is the file_name of an image added through the API: that image is not `index`'s.
    taken: list[tuple[Path, int]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


@dataclass
class Report:
    indexed: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)
    taken: list[tuple[Path, int]] = field(default_factory=list)


def scan(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    for directory, subdirectories, files in os.walk(root):
        subdirectories.sort()
        for name in sorted(files):
            path = Path(directory, name)
            if path.suffix.lower() in IMAGE_SUFFIXES:
                yield path, path.stat()


def plan(library: Library, root: Path) -> Plan:
    """What to (re)index: new and changed files, files missing an engine's feature (an engine was
    added to the library), with ids; files `index` stored under `root`, now gone. Images added through
    the API are never touched, even where their file_name is a path under `root`."""
    root = root.resolve()
    records = library.store.records()
    stored = {record.file_name: record for record in records if record.from_folder}
    added_by_api = {record.file_name: record.image_id for record in records if not record.from_folder}
    complete = set.intersection(*(set(library.store.feature_ids(name).tolist()) for name in library.engines))
    found = list(scan(root))
    used_ids = {record.image_id for record in records}
    numeric = {int(p.stem) for p, _ in found if p.stem.isdigit() and int(p.stem) < 2**63}
    next_free = max(used_ids | numeric, default=-1) + 1
    result = Plan()
    for path, stat in found:
        try:
            check_file_name(str(path))
        except LookalikeError as exc:
            result.failed.append((path, exc.message))
            continue
        if str(path) in added_by_api:
            result.taken.append((path, added_by_api[str(path)]))
            continue
        record = stored.get(str(path))
        if record is not None:
            if (record.size, record.mtime_ns) == (stat.st_size, stat.st_mtime_ns) and record.image_id in complete:
                result.unchanged += 1
                continue
            image_id = record.image_id
        elif path.stem.isdigit() and int(path.stem) in numeric and int(path.stem) not in used_ids:
            image_id = int(path.stem)
        else:
            image_id, next_free = next_free, next_free + 1
        used_ids.add(image_id)
        result.jobs.append(Job(path, image_id, stat.st_size, stat.st_mtime_ns))
    on_disk = {str(path) for path, _ in found}
    prefix = str(root) + os.sep
    result.missing = [r.image_id for n, r in stored.items() if n.startswith(prefix) and n not in on_disk]
    return result


def run(
    library: Library,
    root: Path,
    workers: int | None = None,
    on_start: Callable[[int], None] = lambda total: None,
    on_done: Callable[[Job, str | None], None] = lambda job, error: None,
    checkpoint_seconds: float = 60.0,
) -> Report:
    """Index `root`; `on_done` is called once per job with an error message or None."""
    todo = plan(library, root)
    report = Report(unchanged=todo.unchanged, removed=len(todo.missing), failed=todo.failed, taken=todo.taken)
    if todo.missing:
        library.delete_many(todo.missing)
    on_start(len(todo.jobs))
    batch: list[tuple[ImageRecord, dict[str, np.ndarray]]] = []
    last_commit = last_checkpoint = time.monotonic()

    def commit() -> None:
        nonlocal batch, last_commit
        if batch:
            library.add_many(batch)
            report.indexed += len(batch)
            batch = []
        last_commit = time.monotonic()

    library.prepare()  # a model is exported (or downloaded) once here, not by every worker at once
    context = multiprocessing.get_context("spawn")  # no fork of a process holding FAISS/OpenMP threads
    engines = {name: (type(engine), engine.options) for name, engine in library.engines.items()}
    start_args = (engines, library.max_pixels, os.getpid())
    with ProcessPoolExecutor(workers or os.cpu_count(), context, worker.start, start_args) as pool:
        try:
            paths = [job.path for job in todo.jobs]
            chunks = [paths[start : start + MODEL_BATCH] for start in range(0, len(paths), MODEL_BATCH)]
            outcomes = (outcome for chunk in pool.map(worker.extract_batch, chunks) for outcome in chunk)
            for job, outcome in zip(todo.jobs, outcomes):
                if isinstance(outcome, str):
                    report.failed.append((job.path, outcome))
                    on_done(job, outcome)
                    continue
                record = ImageRecord(job.image_id, str(job.path), job.size, job.mtime_ns, outcome.digest)
                batch.append((record, outcome.features))
                on_done(job, None)
                if len(batch) >= BATCH_SIZE or time.monotonic() - last_commit > BATCH_SECONDS:
                    commit()
                if time.monotonic() - last_checkpoint > checkpoint_seconds:
                    library.checkpoint()
                    last_checkpoint = time.monotonic()
        finally:
            # Interrupted or not, what was extracted is complete: keep it.
            pool.shutdown(cancel_futures=True)
            commit()
    return report
