"""What each bulk-indexing worker process runs: decode and extract, nothing else.

Kept apart from `indexer` so a worker imports only the engines and decoding, not FAISS or LMDB.
"""

import os
import signal
import threading
import time
from pathlib import Path

import cv2

from .engines import Engine, EngineOptions, decode_for
from .errors import LookalikeError
from .models import runtime

_engines: dict[str, Engine] = {}
_max_pixels = 0


def start(engines: dict[str, tuple[type[Engine], EngineOptions]], max_pixels: int, parent_pid: int) -> None:
    """Process initializer: build the library's engines (name -> class and options) once per worker."""
    global _max_pixels
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    # The parallelism is one worker per core: thread pools of OpenCV and torch (read at its import)
    # would only contend with the other workers.
    os.environ["OMP_NUM_THREADS"] = "1"
    cv2.setNumThreads(1)
    runtime.set_threads(1)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    _engines.update({name: engine(options) for name, (engine, options) in engines.items()})
    _max_pixels = max_pixels


def extract_batch(paths: list[Path]) -> list[dict | str]:
    """Each file's features in every engine, or why it could not be read. Neural engines run the
    decoded images through their model as one batch."""
    outcomes: list[dict | str] = [_decode(path) for path in paths]
    decoded = [i for i, outcome in enumerate(outcomes) if not isinstance(outcome, str)]
    try:
        features = (
            {name: engine.extract_many([outcomes[i][name] for i in decoded]) for name, engine in _engines.items()}
            if decoded
            else {}
        )
        for position, i in enumerate(decoded):
            outcomes[i] = {name: found[position] for name, found in features.items()}
    except LookalikeError:  # one image spoiled the batch: only it should fail
        for i in decoded:
            outcomes[i] = _extract_one(outcomes[i])
    return outcomes


def _extract_one(images: dict) -> dict | str:
    try:
        return {name: engine.extract(images[name]) for name, engine in _engines.items()}
    except LookalikeError as exc:
        return exc.message


def _decode(path: Path):
    try:
        return decode_for(_engines.values(), path.read_bytes(), _max_pixels)
    except LookalikeError as exc:
        return exc.message
    except OSError as exc:
        return f"could not read the file: {exc.strerror}"


def _exit_with_parent(parent_pid: int) -> None:
    # A killed indexer cannot stop its workers, and they would wait for work forever: they watch for it.
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)
