"""What each bulk-indexing worker process runs: decode and extract, nothing else.

Kept apart from `indexer` so a worker imports only the engines and decoding, not FAISS or LMDB.
"""

import hashlib
import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2

from .engines import Engine, EngineOptions, decode_for, extract_each
from .errors import LookalikeError
from .models import runtime
from .thumbnails import THUMBNAIL, make_thumbnail

_engines: dict[str, Engine] = {}
_max_pixels = 0


def start(engines: dict[str, tuple[type[Engine], EngineOptions]], max_pixels: int, parent_pid: int) -> None:
    """Process initializer of the local pool: `set_up`, and exit with the indexer."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    set_up(engines, max_pixels)


def set_up(engines: dict[str, tuple[type[Engine], EngineOptions]], max_pixels: int) -> None:
    """Build the library's engines (name -> class and options) once per worker (a process of the local
    pool, or a Ray actor)."""
    global _max_pixels
    # The parallelism is one worker per core: thread pools of OpenCV and torch (read at its import)
    # would only contend with the other workers.
    os.environ["OMP_NUM_THREADS"] = "1"
    cv2.setNumThreads(1)
    runtime.set_threads(1)
    _engines.update({name: engine(options) for name, (engine, options) in engines.items()})
    _max_pixels = max_pixels


@dataclass
class Extracted:
    digest: bytes  # SHA-256 of the file's bytes
    features: dict  # engine name -> feature
    thumbnail: bytes = b""  # a thumbnails.Thumbnail, as bytes, where asked for


def extract_batch(paths: list[Path], engines: list[str], thumbnails: bool = False) -> list[Extracted | str]:
    """Each file's features in `engines` (and its thumbnail), or why it could not be read. Neural engines
    run the decoded images through their model as one batch."""
    chosen = {name: _engines[name] for name in engines}
    outcomes: list[tuple[bytes, bytes, dict] | str] = [_decode(path, chosen, thumbnails) for path in paths]
    decoded = [i for i, outcome in enumerate(outcomes) if not isinstance(outcome, str)]
    found = {name: extract_each(engine, [outcomes[i][2][name] for i in decoded]) for name, engine in chosen.items()}
    for position, i in enumerate(decoded):
        features = {name: features[position] for name, features in found.items()}
        failed = [f for f in features.values() if isinstance(f, LookalikeError)]  # one engine fails the image
        outcomes[i] = failed[0].message if failed else Extracted(outcomes[i][0], features, outcomes[i][1])
    return outcomes


def _decode(path: Path, engines: dict[str, Engine], thumbnail: bool) -> tuple[bytes, bytes, dict] | str:
    """The file's digest, its thumbnail (where asked for) and each engine's image; or why it cannot be read."""
    try:
        data = path.read_bytes()
        images = decode_for(engines.values(), data, _max_pixels, thumbnail=thumbnail)
        made = make_thumbnail(data, images.pop(THUMBNAIL)).to_bytes() if thumbnail else b""
        return hashlib.sha256(data).digest(), made, images
    except LookalikeError as exc:
        return exc.message
    except OSError as exc:
        return f"could not read the file: {exc.strerror}"


def _exit_with_parent(parent_pid: int) -> None:
    # A killed indexer cannot stop its workers, and they would wait for work forever: they watch for it.
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(1)
