"""ONNX Runtime sessions, and ONNX files exported once from torch and cached beside the data."""

import contextlib
import io
import logging
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ..errors import ModelUnavailable
from .download import locked

log = logging.getLogger(__name__)

# One inference at a time per process uses the cores given here; the bulk indexer runs one process
# per core and sets this to 1 in each.
_threads = 0  # 0: ONNX Runtime's default, every core


def set_threads(threads: int) -> None:
    global _threads
    _threads = threads


def threads() -> int:
    return _threads


def open_session(path: Path):
    """An ONNX Runtime CPU session for the model at `path`."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = _threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # warnings about unused initializers are noise to a user
    try:
        return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types, not importable portably
        raise ModelUnavailable(f"could not load the ONNX model {path}: {exc}") from exc


def softmax(logits: np.ndarray) -> np.ndarray:
    """Rows of logits to float32 probabilities (shifted by each row's maximum, so exp cannot overflow)."""
    exponentials = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (exponentials / exponentials.sum(axis=1, keepdims=True)).astype(np.float32)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 length, as float32: their inner products are cosines."""
    return (vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@contextlib.contextmanager
def quietly() -> Iterator[None]:
    """Exporters print progress and tracer warnings meant for model authors, not users: hide them."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def exported(path: Path, export: Callable[[Path], None]) -> Path:
    """`path`, made by `export(temporary_path)` the first time (under a lock, atomically)."""
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with locked(path.parent / ".lock"):
        if path.exists():
            return path  # another process exported it while we waited
        log.info("making %s (once; later starts reuse it)", path)
        fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
        os.close(fd)
        try:
            with quietly():
                export(Path(temporary))
            with open(temporary, "rb") as file:
                os.fsync(file.fileno())  # a power cut must not leave an empty model under the final name
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)
    return path
