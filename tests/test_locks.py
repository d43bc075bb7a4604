"""The readers-writer lock the store and the point and text indexes share their data with."""

import threading
import time

from lookalike.locks import SharedExclusiveLock


def test_readers_share_a_writer_is_alone_and_is_not_starved():
    lock = SharedExclusiveLock()
    inside = {"readers": 0, "most_readers": 0, "writer_saw_readers": False}
    count = threading.Lock()
    stop = threading.Event()

    deadline = time.monotonic() + 5  # so that a starved writer fails the test instead of hanging it

    def read() -> None:
        while not stop.is_set() and time.monotonic() < deadline:  # back to back: never a moment without readers
            with lock.shared():
                with count:
                    inside["readers"] += 1
                    inside["most_readers"] = max(inside["most_readers"], inside["readers"])
                time.sleep(0.002)
                with count:
                    inside["readers"] -= 1

    readers = [threading.Thread(target=read) for _ in range(4)]
    for thread in readers:
        thread.start()
    time.sleep(0.1)
    waited = []
    for _ in range(5):
        started = time.monotonic()
        with lock.exclusive():
            waited.append(time.monotonic() - started)
            with count:
                inside["writer_saw_readers"] |= inside["readers"] > 0
            time.sleep(0.002)
    stop.set()
    for thread in readers:
        thread.join()
    assert inside["most_readers"] > 1, "readers hold the lock together"
    assert not inside["writer_saw_readers"], "no reader is inside while the writer is"
    assert max(waited) < 0.5, waited
