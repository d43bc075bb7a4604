"""Model weights downloaded on first use and pinned by sha256, so an install needs no manual step and a
truncated, tampered or replaced file is never loaded; on a server that cannot download them, files
brought over from another machine are installed the same way (`install_file`)."""

import fcntl
import hashlib
import http.client
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from ..errors import ModelUnavailable

CHUNK_BYTES = 1 << 20
TIMEOUT_SECONDS = 30  # per socket operation, not for the whole file: a slow link still finishes

# (path, sha256, size, mtime_ns) of files hashed in this process: checked once, not on every engine start.
_verified: set[tuple[Path, str, int, int]] = set()


@dataclass(frozen=True)
class RemoteWeights:
    """A weights file: where to get it, the sha256 it must have, and its file name in the models directory."""

    name: str
    url: str
    sha256: str
    filename: str
    size: int | None = None  # bytes, where the publisher or the projects that pin the file state it

    def looked_for(self) -> list[str]:
        """The names a folder may hold this file by (`registry.install_model`): its path in the models
        directory, its file name there, and its name at the URL with and without its folder (a copy
        of the model's repository)."""
        at_url = Path(urllib.parse.urlparse(self.url).path)
        names = [self.filename, Path(self.filename).name, str(at_url.relative_to(at_url.parent.parent)), at_url.name]
        return list(dict.fromkeys(names))


def fetch_weights(weights: RemoteWeights, models_dir: Path, progress: bool = True) -> Path:
    """The path of the verified weights file, downloaded into models_dir first if it is missing or wrong.

    Raises ModelUnavailable (with how to install the file by hand) when it cannot be downloaded or verified."""
    path = models_dir / weights.filename
    if not re.fullmatch(r"[0-9a-f]{64}", weights.sha256):
        # Without a trusted hash anything served at the URL would be loaded (and unpickled): refuse.
        raise ModelUnavailable(
            f"model {weights.name!r} has no trusted sha256 (got {weights.sha256!r}), so neither a download from "
            f"{weights.url} nor a file at {path} can be verified; give its weights entry the sha256 you trust"
        )
    return _placed(weights, models_dir, lambda file: _stream(weights, path, file, progress), "the download")


def install_file(weights: RemoteWeights, source: Path, models_dir: Path) -> Path:
    """Copy `source` into models_dir as `weights`' file, verified as a download is: the path it has there."""
    return _placed(weights, models_dir, lambda file: _copy(source, file), str(source))


def _placed(weights: RemoteWeights, models_dir: Path, fill: Callable[[BinaryIO], str], what: str) -> Path:
    """`weights`' file in models_dir: kept where it is there and verified, else written by `fill` (which
    returns the sha256 of what it wrote; `what` names its source in errors) and verified."""
    path = models_dir / weights.filename
    if is_verified(path, weights.sha256):
        return path  # no lock needed to read a complete file, so a read-only models_dir works too
    path.parent.mkdir(parents=True, exist_ok=True)  # filename may name a subfolder of models_dir
    with locked(models_dir / ".lock"):  # two processes starting at once write the file only once
        if is_verified(path, weights.sha256):
            return path  # another process wrote it while we waited
        path.unlink(missing_ok=True)  # truncated or replaced: write it again rather than load it
        _write_verified(weights, path, fill, what)
        is_verified(path, weights.sha256)  # remember it, so the next call does not hash it again
    return path


def is_verified(path: Path, sha256: str) -> bool:
    """Whether path exists with this sha256 (hashed once per process while its size and mtime stay)."""
    try:
        stat = path.stat()
        key = (path.resolve(), sha256, stat.st_size, stat.st_mtime_ns)
        if key not in _verified:
            if _sha256_of(path) != sha256:
                return False
            _verified.add(key)
        return True
    except FileNotFoundError:  # also when another process removes a bad copy under our feet
        return False


def _write_verified(weights: RemoteWeights, path: Path, fill: Callable[[BinaryIO], str], what: str) -> None:
    """Write with `fill` (which returns the sha256 of what it wrote) to a temp file beside path, check
    the hash, fsync and rename: path is complete or absent."""
    fd, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    temp_path = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            got = fill(file)
            os.fsync(file.fileno())
        if got != weights.sha256:
            raise _unavailable(weights, path, f"{what} has the wrong sha256: expected {weights.sha256}, got {got}")
        os.replace(temp_path, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # make the rename itself durable
        finally:
            os.close(directory)
    finally:
        temp_path.unlink(missing_ok=True)  # after a failure or an interrupt: no partial file left behind


def _stream(weights: RemoteWeights, path: Path, file: BinaryIO, progress: bool) -> str:
    """Copy the URL's body into file; return its sha256."""
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(weights.url, timeout=TIMEOUT_SECONDS) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            with _progress_bar(weights.name, total, progress) as advance:
                while chunk := response.read(CHUNK_BYTES):
                    file.write(chunk)
                    digest.update(chunk)
                    advance(len(chunk))
    except urllib.error.HTTPError as exc:
        raise _unavailable(weights, path, f"{weights.url} answered HTTP {exc.code} {exc.reason}") from exc
    except (OSError, http.client.HTTPException) as exc:  # URLError: no network, refused; reset, timeout, disk full
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
        raise _unavailable(weights, path, f"could not download {weights.url} ({reason})") from exc
    return digest.hexdigest()


def _copy(source: Path, file: BinaryIO) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as read:
        while chunk := read.read(CHUNK_BYTES):
            file.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def _unavailable(weights: RemoteWeights, path: Path, reason: str) -> ModelUnavailable:
    from .registry import models_holding  # the registry imports the models that import this module

    ways = [f"run `lookalike models install {name} --from DIR` with it in DIR" for name in models_holding(weights)]
    return ModelUnavailable(
        f"model {weights.name!r} is not available: {reason}. To install it by hand, download "
        f"{described(weights)} on a machine that can, copy it here and {' or '.join([*ways, f'put it at {path}'])}."
    )


def described(weights: RemoteWeights) -> str:
    """A file as a person fetching it by hand needs it described: name, size, sha256, where from."""
    size = f"{weights.size:,} bytes" if weights.size else "size not published"
    return f"{Path(weights.filename).name} ({size}, sha256 {weights.sha256}, from {weights.url})"


def _sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """An exclusive flock, released when the file is closed (also when the process dies)."""
    with lock_path.open("a") as lock_file:
        fcntl.flock(lock_file, fcntl.LOCK_EX)
        yield


@contextmanager
def _progress_bar(name: str, total: int | None, enabled: bool) -> Iterator:
    """Yield advance(n_bytes); the bar goes to stderr so it never mixes with a command's --json output."""
    if not enabled:
        yield lambda n_bytes: None
        return
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(f"downloading {name}", *columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(name, total=total)
        yield lambda n_bytes: bar.advance(task, n_bytes)
