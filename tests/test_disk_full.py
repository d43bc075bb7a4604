"""A data directory whose disk fills up during API adds and during `lookalike index`: a clear 507 or CLI
error, nothing half-written, and once space is freed the store reopens and a rerun completes.

The disk is a small tmpfs mounted for the test; where this machine does not allow mounting (not root,
no mount namespace), the tests are skipped and say why."""

import os
import subprocess
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import LOCAL_URL, error, lookalike, ok, upload
from photos import encode

from lookalike.config import Settings
from lookalike.library import Library
from lookalike.service import create_app

ENGINES = ["phash", "color"]


@pytest.fixture
def small_disk(tmp_path):
    """A 48 MiB tmpfs, filled up to its last ~300 KiB once the library is open; yields (mount, filler)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(mount: Path, leave: int = 300 * 1024) -> Path:
    filler = mount / "filler"
    free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
    with open(filler, "wb") as file:
        file.write(b"\0" * max(0, free - leave))
    return filler


def check_consistent(data_dir: Path) -> int:
    """Reopen: every record has every engine's feature and each index holds exactly the stored ids."""
    with Library(data_dir, ENGINES) as library:
        stored = {record.image_id for record in library.store.records()}
        for engine in ENGINES:
            assert set(library.store.feature_ids(engine).tolist()) == stored, engine
            assert library.stats()["engines"][engine]["indexed"] == len(stored), engine
        return len(stored)


def test_api_adds_on_a_full_disk_get_507_and_lose_nothing(small_disk, photos):
    data_dir = small_disk / "data"
    settings = Settings(data_dir=data_dir, engines=ENGINES)
    images = [encode(photo) for photo in list(photos.values())[:20]]
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        filler = fill(small_disk)
        added, refused = [], None
        for image_id in range(2000):
            response = upload(client, "/images", images[image_id % len(images)], image_id=image_id)
            if response.status_code != 201:
                refused = response
                break
            added.append(image_id)
        assert refused is not None, "the disk never filled up"
        assert "disk" in error(refused, 507) and "full" in refused.json()["detail"]
        assert ok(client.get("/stats"))["images"] == len(added)  # the refused add left nothing behind
    assert check_consistent(data_dir) == len(added)
    filler.unlink()
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        ok(upload(client, "/images", images[0], image_id=5000), 201)
        assert ok(client.get("/stats"))["images"] == len(added) + 1


def test_index_on_a_full_disk_stops_with_a_clear_error_and_a_rerun_completes(small_disk, tmp_path, photos):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for number, photo in enumerate(list(photos.values()) * 12):  # ~550 files: more than the space left
        (gallery / f"{number}.jpg").write_bytes(encode(photo.resize((96, 96))))
    data_dir = small_disk / "data"
    ok_first = lookalike(data_dir, "stats", env={"LOOKALIKE_ENGINES": '["phash", "color"]'})
    assert ok_first.returncode == 0, ok_first.stderr
    filler = fill(small_disk, leave=150 * 1024)
    env = {"LOOKALIKE_ENGINES": '["phash", "color"]'}
    failed = lookalike(data_dir, "index", str(gallery), "--workers", "1", env=env, timeout=600)
    assert failed.returncode == 1 and "full" in failed.stderr, failed.stderr[-2000:]
    assert "Traceback" not in failed.stderr
    committed = check_consistent(data_dir)
    assert committed < len(list(gallery.iterdir()))
    filler.unlink()
    rerun = lookalike(data_dir, "index", str(gallery), "--workers", "1", env=env, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert check_consistent(data_dir) == len(list(gallery.iterdir()))
