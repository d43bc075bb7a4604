"""Helpers every test module shares: an in-memory feature source, a simulated crash, HTTP and CLI calls."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from lookalike.features import FeatureSpec
from lookalike.library import Library

# The service answers only to trusted host names: loopback ones by default (TestClient's is "testserver").
LOCAL_URL = "http://localhost"
# A text query per text-searchable engine, and the test photo it names.
# A text, and the photo it finds first (for the text engine, the word written into the photo:
# tests/words_in_photos.py's WORDS).
TEXT_QUERIES = {
    "image_text": ("a cup of coffee", "coffee"),
    "tags": ("espresso", "coffee"),
    "text": ("espresso", "coffee"),
    # Words of the tiny random captioner (tests/tiny_captioner.py), which captions chelsea "w36".
    "captions": ("w36", "chelsea"),
    "caption_embedding": ("w36", "chelsea"),
}


class MemorySource:
    """One engine's features in memory, read as an index reads the store's (`indexes.FeatureSource`)."""

    def __init__(self, spec: FeatureSpec, features: dict | None = None):
        self.spec = spec
        self.features = dict(features or {})

    def read(self, image_ids=None):
        wanted = sorted(self.features) if image_ids is None else [i for i in image_ids if i in self.features]
        found = [self.features[i] for i in wanted]
        if self.spec.fixed_size:
            found = np.array(found, self.spec.dtype).reshape(len(wanted), self.spec.width)
        return np.array(wanted, np.int64), found

    def ids(self) -> np.ndarray:
        return np.array(sorted(self.features), np.int64)

    def count(self) -> int:
        return len(self.features)


def crash(library: Library) -> None:
    """Drop a library the way a killed process would: nothing saved, only what LMDB committed."""
    library.store.close()
    library._lock_file.close()


def ok(response, status: int = 200):
    assert response.status_code == status, response.text
    return response.json()


def error(response, status: int) -> object:
    """Assert a JSON error of `status` with a non-empty detail; return the detail."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail"}, body
    assert body["detail"], body
    return body["detail"]


def upload(client, url: str, data: bytes, **form):
    """POST `data` as the multipart file field `image`, with the other form fields as text."""
    files = {"image": ("upload.jpg", data, "application/octet-stream")}
    return client.post(url, files=files, data={key: str(value) for key, value in form.items()})


def lookalike(data_dir: Path, *args: str, env: dict | None = None, **options) -> subprocess.CompletedProcess:
    """The `lookalike` command as a user runs it, on `data_dir`."""
    env = {**os.environ, "LOOKALIKE_DATA_DIR": str(data_dir), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "lookalike", *args], env=env, capture_output=True, text=True, **options
    )
