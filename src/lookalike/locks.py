"""A shared/exclusive (readers-writer) lock that lets a waiting writer in before new readers, and the
lock that makes one process at a time the owner of a data directory."""

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import LookalikeError


class SharedExclusiveLock:
    """Many holders of the shared side at once, or one of the exclusive side.

    The store grows LMDB's map under the exclusive side (no transaction may be open then); the point
    and text indexes let searches run together and changes wait for them. Once a change waits, new
    searches wait behind it: with searches back to back, it would otherwise never find a moment
    without readers. Not reentrant: a holder of the shared side must not take it again.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writers_waiting = 0
        self._writing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: not self._writing and not self._writers_waiting)
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                if not self._readers:
                    self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._writers_waiting += 1
            self._condition.wait_for(lambda: not self._writing and not self._readers)
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._condition:
                self._writing = False
                self._condition.notify_all()


def lock_data_dir(data_dir: Path):
    """One process at a time owns a data directory: another's writes would not reach our indexes."""
    lock_file = open(data_dir / "lock", "a+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock_file.seek(0)
        owner = lock_file.read().strip() or "another process"
        lock_file.close()
        raise LookalikeError(f"{data_dir} is in use by lookalike process {owner}; stop it first") from None
    lock_file.truncate(0)
    lock_file.write(str(os.getpid()))
    lock_file.flush()
    return lock_file
