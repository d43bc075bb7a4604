"""The background pass: the slow engines' features that the backlog owes, made after the fast ones.

A photo added with `defer_slow` (or by `lookalike index`'s first pass) is searchable by the fast
engines at once; its entry in the store's backlog (`store/backlog.py`) names the slow engines it still
waits for. `catch_up` makes a few of those features and writes them with `Library.complete`, which
cuts the entries back in the same transaction. The service runs it on one thread per core
(`BackgroundPass`), each on other entries, at a lower priority than the requests' threads, until the
backlog is empty and whenever an add fills it again; `lookalike index` runs its own second pass with
its worker processes (`indexer.py`), and leaves what it did not finish to the service.
"""

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections import Counter, deque
from contextlib import AbstractContextManager
from dataclasses import replace
from pathlib import Path

from .engines import extract_each
from .errors import LookalikeError
from .library import Library
from .store import Pending

log = logging.getLogger(__name__)
BATCH = 8  # images made at once: the neural engines run them through their model as one batch
RATE_WINDOW_SECONDS = 120.0  # how far back the rate looks


def catch_up(library: Library, limit: int = BATCH) -> dict[str, int]:
    """Make the owed features of up to `limit` pending images (every served slow engine each waits
    for) and write them; returns how many images each engine worked on (none: nothing is owed)."""
    return work_off(library, owed(library, limit), library.extracting)


def owed(library: Library, limit: int, skip: set[int] | frozenset = frozenset()) -> list[Pending]:
    """Up to `limit` pending images, but those in `skip`, each with the served engines it waits for."""
    served = set(library.engines)
    found = library.store.pending(served, limit=limit + len(skip))
    return [
        replace(pending, engines=tuple(name for name in pending.engines if name in served))
        for pending in found
        if pending.image_id not in skip
    ][:limit]


def work_off(library: Library, owed: list[Pending], gate: AbstractContextManager) -> dict[str, int]:
    """Make the `owed` features, each extraction inside `gate`, and write them; how many images each
    engine worked on."""
    decoded = {}
    for pending in owed:
        try:
            decoded[pending.image_id] = library.decode(source_of(library, pending), list(pending.engines))
        except LookalikeError as exc:  # given up: written below without these features
            log.warning("image %d gets no %s feature: %s", pending.image_id, ", ".join(pending.engines), exc)
    made: dict[int, dict] = {pending.image_id: {} for pending in owed}
    for name in {name for pending in owed for name in pending.engines}:
        ids = [pending.image_id for pending in owed if name in pending.engines and pending.image_id in decoded]
        with gate:
            features = extract_each(library.engines[name], [decoded[i][name] for i in ids])
        for image_id, feature in zip(ids, features):
            if isinstance(feature, LookalikeError):  # given up: the image stays without it
                log.warning("the %s engine cannot read image %d: %s", name, image_id, feature)
            else:
                made[image_id][name] = feature
    library.complete([(pending, made[pending.image_id]) for pending in owed])
    return dict(Counter(name for pending in owed for name in pending.engines))


def source_of(library: Library, pending: Pending) -> bytes:
    """The bytes a pending image was added from: kept with its entry (an upload) or its file (`index`),
    as long as they are the same bytes. Raises LookalikeError where they are gone or changed."""
    data = library.store.held(pending.image_id)
    if data is None:
        record = library.store.record(pending.image_id)
        if record is None or not record.from_folder:
            raise LookalikeError("the bytes it was added from were not kept")
        try:
            data = Path(record.file_name).read_bytes()
        except OSError as exc:
            raise LookalikeError(f"its file cannot be read ({exc.strerror})") from None
    if hashlib.sha256(data).digest() != pending.digest:
        raise LookalikeError("its file has changed since it was indexed (the next `lookalike index` redoes it)")
    return data


class Rates:
    """Features made per second by each engine, over the last RATE_WINDOW_SECONDS."""

    def __init__(self):
        self._done: deque[tuple[float, str, int]] = deque()
        self._lock = threading.Lock()

    def record(self, engines: dict[str, int]) -> None:
        with self._lock:
            self._done.extend((time.monotonic(), name, count) for name, count in engines.items())

    def per_second(self) -> dict[str, float]:
        now = time.monotonic()
        with self._lock:
            while self._done and self._done[0][0] < now - RATE_WINDOW_SECONDS:
                self._done.popleft()
            if not self._done:
                return {}
            span = max(now - self._done[0][0], 1.0)
            made: dict[str, int] = {}
            for _, name, count in self._done:
                made[name] = made.get(name, 0) + count
        return {name: count / span for name, count in made.items()}


class BackgroundPass:
    """The service's threads that work the backlog off, one per core, each on images the others are
    not on: woken by adds that fill it, stopped with the service. They run at a lower priority and
    outside the library's extraction slots, so a request's extraction does not wait for theirs: the
    pass gets the cores the requests leave."""

    def __init__(self, library: Library, threads: int | None = None):
        self.library = library
        self.rates = Rates()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._claimed: set[int] = set()
        self._claiming = threading.Lock()
        count = threads or os.cpu_count() or 1
        self._threads = [
            threading.Thread(target=self._run, name=f"background-pass-{i}", daemon=True) for i in range(count)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join()

    def jobs(self) -> dict:
        """Each slow engine's backlog, the rate it is worked off at, and when it should be done."""
        backlog = self.library.store.backlog()
        rates = self.rates.per_second()
        return {
            name: {
                "backlog": backlog[name],
                "per_second": round(rates.get(name, 0.0), 3),
                "eta_seconds": round(backlog[name] / rates[name]) if backlog[name] and rates.get(name) else None,
            }
            for name in self.library.slow_engines
        }

    def _run(self) -> None:
        _lower_priority()
        while not self._stop.is_set():
            self._wake.clear()
            with self._claiming:
                batch = owed(self.library, BATCH, self._claimed)
                self._claimed.update(pending.image_id for pending in batch)
            if not batch:
                self._wake.wait(60.0)
                continue
            try:
                self.rates.record(work_off(self.library, batch, contextlib.nullcontext()))
            except Exception:  # the pass must outlive one bad batch; the entries stay for the next try
                log.exception("the background pass failed; retrying in a minute")
                self._wake.wait(60.0)
            finally:
                with self._claiming:
                    self._claimed.difference_update(pending.image_id for pending in batch)


def _lower_priority() -> None:
    """Give the calling thread a nice value of 10 (Linux sets it per thread), so requests go first."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except (AttributeError, OSError):  # not Linux, or not allowed: the pass shares the cores evenly
        pass
