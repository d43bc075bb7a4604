"""The `lookalike` command, run as a user runs it: incremental indexing, interruption, crashes, search, dupes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from helpers import lookalike
from photos import encode
from PIL import ImageOps

from lookalike.config import Settings
from lookalike.engines import create_engine
from lookalike.indexes.points import PointIndex
from lookalike.indexes.text import TextIndex
from lookalike.library import Library
from lookalike.store import FeatureStore

ENGINES = Settings.model_fields["engines"].default


def start_indexing(data_dir: Path, folder: Path) -> subprocess.Popen:
    env = {**os.environ, "LOOKALIKE_DATA_DIR": str(data_dir)}
    command = [sys.executable, "-m", "lookalike", "index", str(folder), "--workers", "2"]
    # A job a non-interactive shell starts in the background inherits SIGINT ignored; Ctrl-C is the test.
    return subprocess.Popen(
        command,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, photos) -> Path:
    """A small gallery: photos, a mirrored copy, integer-named files, a subfolder and a broken file."""
    folder = tmp_path_factory.mktemp("gallery")
    (folder / "nested").mkdir()
    for number, name in enumerate(["astronaut", "coffee", "chelsea", "rocket"]):
        (folder / f"{name}.jpg").write_bytes(encode(photos[name]))
        (folder / "nested" / f"{1000 + number}.png").write_bytes(
            encode(photos[f"pexels-{_interior(photos)[number]}"], "PNG")
        )
    (folder / "astronaut-mirrored.jpg").write_bytes(encode(ImageOps.mirror(photos["astronaut"])))
    (folder / "broken.jpg").write_bytes(encode(photos["coffee"])[:500])
    (folder / "notes.txt").write_text("not an image and not an image suffix")
    return folder


@pytest.fixture(scope="module")
def big_gallery(tmp_path_factory, photos) -> Path:
    """Enough files that indexing takes several seconds and commits several batches."""
    folder = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(3)
    sources = list(photos.values())
    for number in range(700):
        photo = sources[number % len(sources)]
        width, height = photo.size
        left, top = int(rng.integers(0, width // 3)), int(rng.integers(0, height // 3))
        tile = photo.crop((left, top, left + width // 2, top + height // 2)).resize((400, 300))
        (folder / f"tile{number:04d}.jpg").write_bytes(encode(tile))
    return folder


def test_index_is_incremental_and_names_become_ids(tmp_path, gallery, photos):
    gallery = Path(shutil.copytree(gallery, tmp_path / "gallery"))
    first = lookalike(tmp_path, "index", str(gallery))
    assert first.returncode == 0, first.stderr
    assert "indexed 9, unchanged 0, removed 0 (gone from disk), failed 1" in first.stderr
    assert "broken.jpg" in first.stderr and "truncated" in first.stderr
    with Library(tmp_path, ENGINES) as library:
        assert library.store.count() == 9
        for number in range(4):
            record = library.store.record(1000 + number)
            assert record is not None and record.file_name == str(gallery / "nested" / f"{1000 + number}.png")
        other_ids = {library.id_for_name(str(gallery / f"{n}.jpg")) for n in ["astronaut", "coffee", "chelsea"]}
        assert len(other_ids) == 3 and min(other_ids) > 1003  # fresh ids never take a numeric name's id

    again = lookalike(tmp_path, "index", str(gallery))
    assert "indexed 0, unchanged 9" in again.stderr

    (gallery / "chelsea.jpg").unlink()
    (gallery / "coffee.jpg").write_bytes(encode(ImageOps.grayscale(photos["rocket"]).convert("RGB")))
    changed = lookalike(tmp_path, "index", str(gallery))
    assert "indexed 1, unchanged 7, removed 1" in changed.stderr
    with Library(tmp_path, ENGINES) as library:
        assert library.id_for_name(str(gallery / "coffee.jpg")) in other_ids  # same id, new features
        assert library.store.id_for_name(str(gallery / "chelsea.jpg")) is None


def test_an_engine_added_later_is_filled_in_by_the_next_index(tmp_path, gallery):
    first = lookalike(tmp_path, "index", str(gallery), env={"LOOKALIKE_ENGINES": '["phash", "color"]'})
    assert "indexed 9, unchanged 0" in first.stderr, first.stderr
    with Library(tmp_path, ["phash", "color"]) as library:
        assert library.store.count("phash") == 9
    second = lookalike(tmp_path, "index", str(gallery))  # the default engines include local and the neural ones
    assert "indexed 9, unchanged 0" in second.stderr, second.stderr
    with Library(tmp_path, ENGINES) as library:
        assert all(library.store.count(name) == 9 for name in ENGINES)
        assert_consistent(library)
    assert "indexed 0, unchanged 9" in lookalike(tmp_path, "index", str(gallery)).stderr


def test_search_dupes_and_stats(tmp_path, gallery, photos):
    lookalike(tmp_path, "index", str(gallery))
    query = tmp_path / "query.jpg"
    query.write_bytes(encode(photos["rocket"], "JPEG", quality=40))
    found = json.loads(lookalike(tmp_path, "search", str(query), "-k", "2", "--json").stdout)
    best = found["hits"][0]
    assert found["verdict"] == best["verdict"] == "near_duplicate" and len(found["hits"]) == 2
    assert best["file_name"] == str(gallery / "rocket.jpg")
    assert {"phash", "color", "local", "global"} <= set(best["evidence"])
    assert best["evidence"]["phash"]["rank"] == 1 and best["evidence"]["local"]["matches"] >= 20
    only_color = json.loads(lookalike(tmp_path, "search", str(query), "--engine", "color", "--json").stdout)
    assert list(only_color) == ["color"]

    groups = json.loads(lookalike(tmp_path, "dupes", "--json").stdout)
    names = [{Path(m["file_name"]).name for m in group["images"]} for group in groups]
    assert {"astronaut.jpg", "astronaut-mirrored.jpg"} in names  # a mirror image is a near-duplicate
    assert all(group["tier"] == "near_duplicate" for group in groups), groups
    strict = json.loads(lookalike(tmp_path, "dupes", "--json", "--threshold", "0").stdout)
    assert strict == []

    stats = json.loads(lookalike(tmp_path, "stats").stdout)
    assert stats["engines"]["phash"] == {"features": stats["images"], "indexed": stats["images"], "model": None}
    assert set(stats["backlog"].values()) == {0}  # index made the slow engines' features too
    assert stats["engines"]["local"]["indexed"] == stats["images"] and stats["engines"]["local"]["descriptors"] > 0

    table = lookalike(tmp_path, "search", str(query), "-k", "1")
    assert table.returncode == 0 and "rocket.jpg" in table.stdout

    by_text = json.loads(lookalike(tmp_path, "search", "--text", "a cat", "-k", "1", "--json").stdout)
    assert by_text["hits"][0]["file_name"] == str(gallery / "chelsea.jpg")
    assert by_text["found"]["image_text"][0]["file_name"] == str(gallery / "chelsea.jpg")
    described = lookalike(tmp_path, "search", "--text", "a cat", "-k", "1")
    assert "described by 'a cat'" in described.stdout and "chelsea.jpg" in described.stdout
    both = lookalike(tmp_path, "search", str(query), "--text", "a cat")
    assert both.returncode != 0 and "not both" in both.stderr
    assert "espresso" in lookalike(tmp_path, "tags", str(gallery / "coffee.jpg")).stdout.splitlines()


def test_duplicates_are_grouped(tmp_path, photos):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ["astronaut", "coffee", "rocket"]:
        (folder / f"{name}.jpg").write_bytes(encode(photos[name]))
        (folder / f"{name}-small.png").write_bytes(encode(photos[name].resize((200, 150)), "PNG"))
    lookalike(tmp_path / "data", "index", str(folder))
    groups = json.loads(lookalike(tmp_path / "data", "dupes", "--json").stdout)
    assert sorted(sorted(Path(m["file_name"]).name for m in group["images"]) for group in groups) == [
        ["astronaut-small.png", "astronaut.jpg"],
        ["coffee-small.png", "coffee.jpg"],
        ["rocket-small.png", "rocket.jpg"],
    ]


def test_sigkill_mid_run_leaves_a_consistent_library_and_a_rerun_completes(tmp_path, big_gallery):
    total = len(list(big_gallery.iterdir()))
    process = start_indexing(tmp_path, big_gallery)
    committed = wait_for_some_commits(tmp_path, process)
    workers = psutil.Process(process.pid).children()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert 0 < committed < total, "the kill must land mid-run"
    assert workers, "the indexer runs worker processes"
    _, still_running = psutil.wait_procs(workers, timeout=10)
    assert not still_running, "workers must not outlive a killed indexer"

    with Library(tmp_path, ENGINES) as library:
        assert_consistent(library)
        survived = library.store.count()
        assert survived >= committed
    rerun = lookalike(tmp_path, "index", str(big_gallery))
    assert rerun.returncode == 0, rerun.stderr
    assert f"indexed {total - survived}, unchanged {survived}" in rerun.stderr
    with Library(tmp_path, ENGINES) as library:
        assert library.store.count() == total
        assert_consistent(library, complete=True)


def test_ctrl_c_keeps_what_was_indexed_and_says_how_to_resume(tmp_path, big_gallery):
    total = len(list(big_gallery.iterdir()))
    process = start_indexing(tmp_path, big_gallery)
    wait_for_some_commits(tmp_path, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr[-3000:]
    assert "run the same command to resume" in stderr
    with Library(tmp_path, ENGINES) as library:
        assert_consistent(library)
        kept = library.store.count()
        assert 0 < kept < total
    rerun = lookalike(tmp_path, "index", str(big_gallery))
    assert f"indexed {total - kept}, unchanged {kept}" in rerun.stderr


def wait_for_some_commits(data_dir: Path, process: subprocess.Popen) -> int:
    """Poll the store (LMDB allows readers in other processes) until a batch has committed."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()
        if (data_dir / "store" / "data.mdb").exists():
            store = FeatureStore(data_dir / "store", {n: create_engine(n).spec for n in ENGINES})
            count = store.count()
            store.close()
            if count:
                return count
        time.sleep(0.05)
    raise AssertionError("no batch committed within 60 s")


def assert_consistent(library: Library, complete: bool = False) -> None:
    """Every record has a feature in every engine, or (not `complete`) the backlog owes it one from a
    slow engine; every index holds exactly the stored features."""
    ids = {record.image_id for record in library.store.records()}
    for name, index in library.indexes.items():
        stored_ids, features = library.store.read_features(name)
        owed = {pending.image_id for pending in library.store.pending({name})}
        assert set(stored_ids.tolist()) | owed == ids and not owed & set(stored_ids.tolist())
        assert not owed or (library.engines[name].slow and not complete)
        assert index.ntotal == len(stored_ids)
        for image_id, feature in list(zip(stored_ids, features))[::25]:
            if isinstance(index, PointIndex):  # the image's descriptors are one range of point ids
                start, end = index.ranges.range_of(int(image_id))
                assert end - start == len(feature)
            elif isinstance(index, TextIndex):  # the image's words find it
                assert not feature.lines or int(image_id) in [hit.image_id for hit in index.search([feature])]
            else:
                assert np.array_equal(index.reconstruct(int(image_id)), feature)


def _interior(photos) -> list[str]:
    return sorted(name.removeprefix("pexels-") for name in photos if name.startswith("pexels-"))
