"""What each bulk-indexing worker process runs: decode and extract, nothing else.

Kept apart from `indexer` so a worker imports only the engines and decoding, not FAISS or LMDB.
"""

import os
import signal
import threading
import time
from pathlib import Path

import cv2

from .engines import Engine, create_engine, decode_for
from .errors import LookalikeError

_engines: dict[str, Engine] = {}
_max_pixels = 0


def start(engines: dict[str, dict | None], max_pixels: int, parent_pid: int) -> None:
    """Process initializer: build the engines (name -> options) once per worker."""
    global _max_pixels
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # The parallelism is one worker per core: thread pools of OpenCV and torch (read at its import)
    # would only contend with the other workers.
    os.environ["OMP_NUM_THREADS"] = "1"
    cv2.setNumThreads(1)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    _engines.update({name: create_engine(name, options) for name, options in engines.items()})
    _max_pixels = max_pixels


def extract(path: Path) -> dict | str:
    """The file's features in every engine, or why it could not be read."""
    try:
        image = decode_for(_engines.values(), path.read_bytes(), _max_pixels)
        return {name: engine.extract(image) for name, engine in _engines.items()}
    except LookalikeError as exc:
        return exc.message
    except OSError as exc:
        return f"could not read the file: {exc.strerror}"


def _exit_with_parent(parent_pid: int) -> None:
    # A killed indexer cannot stop its workers, and they would wait for work forever: they watch for it.
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)
