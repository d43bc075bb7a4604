"""What the library tells of each stored image, for the web page: its thumbnail, its size, its
engines; and of itself: its statistics with the disk it takes.

Thumbnails are made at add time (`Library.add`, `lookalike index`). An image stored before that gets its
thumbnail the first time it is asked for, from the bytes the backlog still holds or from its file where
`index` made it and the file is unchanged; the next `lookalike index` makes the rest.
"""

import logging
from dataclasses import dataclass
from pathlib import Path

from .errors import LookalikeError, NotFound
from .library import Library
from .store import ImageRecord, check_image_id
from .thumbnails import Thumbnail, thumbnail_of

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ImageInfo:
    image_id: int
    file_name: str
    width: int | None  # the original's, upright; None where no thumbnail was made
    height: int | None
    bytes: int | None
    engines: list[str]  # the engines holding its feature
    pending: list[str]  # the engines the background pass still owes it


def describe(library: Library, image_id: int) -> ImageInfo:
    record = _record(library, image_id)
    stored = library.store.thumbnail(image_id)
    thumbnail = Thumbnail.from_bytes(stored) if stored else None
    size = thumbnail.size if thumbnail else record.size or None
    return ImageInfo(
        image_id,
        record.file_name,
        thumbnail.width if thumbnail else None,
        thumbnail.height if thumbnail else None,
        size,
        library.store.engines_of(image_id),
        list(library.store.pending_of([image_id]).get(image_id, ())),
    )


def thumbnail(library: Library, image_id: int) -> Thumbnail:
    """The image's thumbnail, made now (and stored) where it was stored without one and its bytes can
    still be read."""
    record = _record(library, image_id)
    stored = library.store.thumbnail(image_id)
    if stored:
        return Thumbnail.from_bytes(stored)
    data = library.store.held(image_id) or _unchanged_file(record)
    if data is None:
        raise NotFound(
            f"image {image_id} has no thumbnail: it was added before thumbnails were made and its bytes are not "
            "kept (add it again, or run `lookalike index` on its folder)"
        )
    try:
        made = thumbnail_of(data, library.max_pixels)
    except LookalikeError as exc:  # its features were made from these bytes, so this is unlikely
        raise NotFound(f"image {image_id} has no thumbnail: {exc.message}") from exc
    library.store.put_thumbnails([(image_id, record.digest, made.to_bytes())])
    return made


def _record(library: Library, image_id: int) -> ImageRecord:
    check_image_id(image_id)
    record = library.store.record(image_id)
    if record is None:
        raise NotFound(f"image {image_id} is not in the library")
    return record


def _unchanged_file(record: ImageRecord) -> bytes | None:
    """The bytes of the file `lookalike index` made the image from, if it is still as indexed."""
    if not record.from_folder:
        return None
    path = Path(record.file_name)
    try:
        stat = path.stat()
        if (stat.st_size, stat.st_mtime_ns) != (record.size, record.mtime_ns):
            return None
        return path.read_bytes()
    except OSError as exc:
        log.info("no thumbnail for image %d: %s", record.image_id, exc)
        return None


def stats(library: Library) -> dict:
    """`Library.stats`, with the bytes on disk of the store, the saved indexes and the models."""
    models = {engine.options.models_dir for engine in library.engines.values()}
    disk = {"store": library.store.disk_bytes(), "indexes": _folder_bytes(library.data_dir / "indexes")}
    return library.stats() | {"disk_bytes": disk | {"models": sum(_folder_bytes(folder) for folder in models)}}


def _folder_bytes(folder: Path) -> int:
    return sum(_file_bytes(path) for path in folder.rglob("*"))


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size if path.is_file() else 0
    except OSError:  # replaced while counted: an index saved beside its old file
        return 0
