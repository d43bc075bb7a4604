"""A shared/exclusive (readers-writer) lock."""

import threading
from collections.abc import Iterator
from contextlib import contextmanager


class SharedExclusiveLock:
    """Many holders of the shared side at once, or one of the exclusive side.

    The store grows LMDB's map under the exclusive side (no transaction may be open then); the point
    index lets searches run together and changes wait for them.
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._condition:
            self._readers += 1
        try:
            yield
        finally:
            with self._condition:
                self._readers -= 1
                self._condition.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._condition:
            self._condition.wait_for(lambda: self._readers == 0)
            yield
