"""The index file: a JSON header (the feature spec, the marker, the kind's own fields), `extra` bytes
of the kind's own, then optionally a FAISS index. Written atomically: temp file, fsync, rename, fsync
of the folder, so a crash leaves the old file or the new one, never half of one."""

import json
import os
import struct
from dataclasses import asdict
from pathlib import Path
from typing import Literal

import faiss

from ..features import FeatureSpec

# Version 2 added the `extra` section.
_MAGIC = b"LOOKALIKE-INDEX2\n"
_LENGTH = struct.Struct(">Q")
Payload = Literal["binary", "float"] | None  # which FAISS index follows, if any


def write_index_file(path: Path, spec: FeatureSpec, header: dict, index=None, extra: bytes = b"") -> None:
    header_bytes = json.dumps({**header, "spec": asdict(spec)}).encode()
    temporary = path.with_suffix(path.suffix + ".tmp")
    try:
        with open(temporary, "wb") as file:
            file.write(_MAGIC + _LENGTH.pack(len(header_bytes)) + header_bytes + _LENGTH.pack(len(extra)) + extra)
            if index is not None:
                writer = faiss.PyCallbackIOWriter(file.write)
                if isinstance(index, faiss.IndexBinary):
                    faiss.write_index_binary(index, writer)
                else:
                    faiss.write_index(index, writer)
                del writer  # flushes its buffer into the file
            file.flush()
            os.fsync(file.fileno())
    except BaseException:  # a full disk, say: the old file stands, and no partial one takes space
        temporary.unlink(missing_ok=True)
        raise
    os.replace(temporary, path)
    fsync_dir(path.parent)


def read_index_file(path: Path, spec: FeatureSpec, payload: Payload = None) -> tuple[dict, bytes, object] | None:
    """(header, extra bytes, FAISS index or None); None if missing, unreadable or made for another spec."""
    try:
        with open(path, "rb") as file:
            if file.read(len(_MAGIC)) != _MAGIC:
                return None
            header = json.loads(file.read(_LENGTH.unpack(file.read(_LENGTH.size))[0]))
            if FeatureSpec(**header["spec"]) != spec:
                return None
            length = _LENGTH.unpack(file.read(_LENGTH.size))[0]
            extra = file.read(length)
            if len(extra) != length:  # torn: the file ends early
                return None
            index = None
            if payload is not None:
                reader = faiss.PyCallbackIOReader(file.read)
                index = faiss.read_index_binary(reader) if payload == "binary" else faiss.read_index(reader)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, struct.error):
        return None
    return header, extra, index


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
