"""Bulk indexing of a folder: reader -> worker processes (decode + features) -> one batched writer.

Two passes: the fast engines' features first, with each image's thumbnail, so the library answers
their searches as soon as possible, each image's slow engines (`Engine.slow`) owed to the store's
backlog; then one pass per slow engine over what the backlog owes it (or none: `defer`, and the
service's background pass makes them). Images stored before thumbnails were made get theirs between.
Each batch commits in one LMDB transaction, so an interrupted or killed run loses at most the batch in
flight; the next run skips every file already stored with the same size and mtime, and its
second passes resume from the backlog.
"""

import multiprocessing
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import worker
from .errors import LookalikeError
from .library import Library
from .store import ImageRecord, Pending, check_file_name

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
    thumbnails: list[Job] = field(default_factory=list)  # unchanged files stored without a thumbnail
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
    owed: dict[str, set[int]] = {name: set() for name in library.engines}
    for pending in library.store.pending():
        for name in set(pending.engines) & owed.keys():
            owed[name].add(pending.image_id)
    # An image the backlog owes a feature is complete there: the second pass makes it.
    complete = set.intersection(*(set(library.store.feature_ids(n).tolist()) | owed[n] for n in library.engines))
    without_thumbnails = {record.image_id for record in library.store.without_thumbnails()}
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
                if record.image_id in without_thumbnails:
                    result.thumbnails.append(Job(path, record.image_id, stat.st_size, stat.st_mtime_ns))
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
    on_start: Callable[[str, int], None] = lambda stage, total: None,
    on_done: Callable[[Job, str | None], None] = lambda job, error: None,
    checkpoint_seconds: float = 60.0,
    defer: bool = False,
    ray: str | None = None,
) -> Report:
    """Index `root`: the fast pass, then a pass per slow engine (none with `defer`). `on_start` is
    called as each pass starts, with its name ("fast engines", or the slow engine's) and its number of
    images; `on_done` once per image of a pass, with an error message or None. With `ray` (a Ray
    cluster's address, "auto", or "local"), the workers are Ray actors there (`ray_workers.py`)."""
    todo = plan(library, root)
    report = Report(unchanged=todo.unchanged, removed=len(todo.missing), failed=todo.failed, taken=todo.taken)
    if todo.missing:
        library.delete_many(todo.missing)
    slow = library.deferrable(list(library.engines))
    fast = [name for name in library.engines if name not in slow]
    library.prepare()  # a model is exported (or downloaded) once here, not by every worker at once
    engines = {name: (type(engine), engine.options) for name, engine in library.engines.items()}
    with _workers(workers, engines, library.max_pixels, ray) as pool:
        writer = _Writer(library, checkpoint_seconds, slow)
        try:
            on_start("fast engines" if slow else "all engines", len(todo.jobs))
            for job, outcome in _extracted(pool, todo.jobs, fast, thumbnails=True):
                if isinstance(outcome, str):
                    report.failed.append((job.path, outcome))
                else:
                    record = ImageRecord(
                        job.image_id, str(job.path), job.size, job.mtime_ns, outcome.digest, outcome.thumbnail
                    )
                    writer.add((record, outcome.features))
                    report.indexed += 1
                on_done(job, outcome if isinstance(outcome, str) else None)
            writer.commit()
            if todo.thumbnails:
                on_start("thumbnails", len(todo.thumbnails))
                for job, outcome in _extracted(pool, todo.thumbnails, [], thumbnails=True):
                    if not isinstance(outcome, str):
                        writer.thumbnail((job.image_id, outcome.digest, outcome.thumbnail))
                    on_done(job, outcome if isinstance(outcome, str) else None)
                writer.commit()
            for name in () if defer else slow:
                owed = _owed_by_files(library, name)
                on_start(name, len(owed))
                for job, outcome in _extracted(pool, list(owed), [name]):
                    if isinstance(outcome, str):  # it cannot make this feature: the image stays without it
                        writer.complete((owed[job], {}))
                    elif outcome.digest == owed[job].digest:  # else changed since: the next run redoes it whole
                        writer.complete((owed[job], outcome.features))
                    on_done(job, outcome if isinstance(outcome, str) else None)
                writer.commit()
        finally:
            # Interrupted or not, what was extracted is complete: keep it.
            pool.shutdown(cancel_futures=True)
            writer.commit()
    return report


def _workers(count: int | None, engines: dict, max_pixels: int, ray: str | None) -> Executor:
    """The extraction workers: local processes, or Ray actors where `ray` names a cluster."""
    if ray is not None:
        from .ray_workers import RayWorkers  # Ray is imported only when asked for

        return RayWorkers(ray, count, engines, max_pixels)
    context = multiprocessing.get_context("spawn")  # no fork of a process holding FAISS/OpenMP threads
    start_args = (engines, max_pixels, os.getpid())
    return ProcessPoolExecutor(count or os.cpu_count(), context, worker.start, start_args)


def _extracted(
    pool: Executor, jobs: list[Job], engines: list[str], thumbnails: bool = False
) -> Iterator[tuple[Job, object]]:
    """Each job with its `engines`' features and thumbnail (a worker.Extracted) or why they could not be
    made, in order."""
    chunks = [[job.path for job in jobs[start : start + MODEL_BATCH]] for start in range(0, len(jobs), MODEL_BATCH)]
    asked = pool.map(worker.extract_batch, chunks, [engines] * len(chunks), [thumbnails] * len(chunks))
    outcomes = (outcome for chunk in asked for outcome in chunk)
    return zip(jobs, outcomes)


def _owed_by_files(library: Library, engine: str) -> dict[Job, Pending]:
    """The images made from files that the backlog owes `engine`'s feature, as jobs, each with what is
    owed (uploads, whose bytes the backlog keeps, are the service's to make)."""
    owed = {}
    for pending in library.store.pending({engine}):
        record = library.store.record(pending.image_id)
        if record is not None and record.from_folder:
            job = Job(Path(record.file_name), record.image_id, record.size, record.mtime_ns)
            owed[job] = replace(pending, engines=(engine,))
    return owed


class _Writer:
    """The one writer: batches of adds (the fast pass, each image owing the `deferred` engines'
    features), of thumbnails, or of owed features (a slow pass), each batch one transaction of
    BATCH_SIZE images or BATCH_SECONDS, the indexes saved every `checkpoint_seconds`."""

    def __init__(self, library: Library, checkpoint_seconds: float, deferred: tuple[str, ...]):
        self.library = library
        self.checkpoint_seconds = checkpoint_seconds
        self.deferred = deferred
        self._adds: list[tuple[ImageRecord, dict]] = []
        self._owed: list[tuple[Pending, dict]] = []
        self._thumbnails: list[tuple[int, bytes, bytes]] = []
        self._last_commit = self._last_checkpoint = time.monotonic()

    def add(self, item: tuple[ImageRecord, dict]) -> None:
        self._adds.append(item)
        self._maybe_commit()

    def complete(self, item: tuple[Pending, dict]) -> None:
        self._owed.append(item)
        self._maybe_commit()

    def thumbnail(self, item: tuple[int, bytes, bytes]) -> None:
        self._thumbnails.append(item)
        self._maybe_commit()

    def commit(self) -> None:
        if self._adds:
            self.library.add_many(self._adds, self.deferred)
        if self._owed:
            self.library.complete(self._owed)
        if self._thumbnails:
            self.library.store.put_thumbnails(self._thumbnails)
        self._adds, self._owed, self._thumbnails = [], [], []
        self._last_commit = time.monotonic()

    def _maybe_commit(self) -> None:
        if (
            len(self._adds) + len(self._owed) + len(self._thumbnails) >= BATCH_SIZE
            or time.monotonic() - self._last_commit > BATCH_SECONDS
        ):
            self.commit()
        if time.monotonic() - self._last_checkpoint > self.checkpoint_seconds:
            self.library.checkpoint()
            self._last_checkpoint = time.monotonic()
