"""SIGKILL mid-write, then reopen: `lookalike index` and the service lose nothing they acknowledged, leave
no half-written record, and keep every index equal to the store. bench/crash_trials.py runs the same
trials by the hundred at random moments; these are a few chosen ones."""

import json
import random
import shutil
import sys
from pathlib import Path

import pytest
from helpers import lookalike
from words_in_photos import Lettering, render

from lookalike.library import Library
from lookalike.store import ImageRecord

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
import crash_trials as trials  # noqa: E402


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, photos) -> Path:
    """700 tiles: `lookalike index` commits them in batches of 256 (or of 2 s, on a slow machine)."""
    return trials.make_gallery(tmp_path_factory.mktemp("crash-gallery"), photos)


@pytest.mark.parametrize(
    ("commits", "checkpoint_seconds", "rebuilds"),
    [(1, 60.0, True), (2, 0.1, False)],
    ids=["after-the-first-batch-before-any-index-save", "after-the-second-batch-with-index-saves"],
)
def test_index_killed_mid_run(tmp_path, gallery, commits, checkpoint_seconds, rebuilds):
    trial = trials.index_trial(tmp_path / "data", gallery, commits, 0.0, checkpoint_seconds)
    assert trial.mid_run and 0 < len(trial.acknowledged) < trials.GALLERY_FILES, "the kill must land mid-run"
    assert trial.findings.all() == []
    # With no index saved yet the reopen rebuilds them from the store; a saved one is caught up from the
    # journal (or was saved after the last commit), never rebuilt.
    assert ("rebuilt" in trial.recovery) == rebuilds, trial.recovery


def test_index_with_text_killed_mid_run(tmp_path, photos, monkeypatch):
    """Killed in its text pass, `index` leaves every image's lines written whole or owed by the
    backlog; the rerun makes the owed ones."""
    monkeypatch.setattr(trials, "ENGINES", ["phash", "text"])
    signs = {
        name: render(photo, Lettering(f"GATE {number:02d}", 40, plate=True), random.Random(number))
        for number, (name, photo) in enumerate(photos.items())
    }
    files = 240  # the text engine is slower: the indexer commits every 2 s, well before the end
    gallery = trials.make_gallery(tmp_path / "gallery", signs, files)
    trial = trials.index_trial(tmp_path / "data", gallery, 1, 0.0, engine="text")
    assert trial.mid_run and len(trial.acknowledged) == files, "the fast pass is done"
    assert 0 < trial.features_at_kill < files, "the kill must land in the text pass"
    assert trial.findings.all() == []
    with Library(tmp_path / "data", trials.ENGINES) as library:
        assert library.store.count("text") == library.stats()["engines"]["text"]["indexed"] == files
        assert library.similar_to_text("text", "gate", k=1), "the tiles' words are searchable"


def test_index_rerun_killed_while_replacing_changed_files(tmp_path, gallery):
    folder = Path(shutil.copytree(gallery, tmp_path / "gallery"))
    data_dir = tmp_path / "data"
    first = lookalike(data_dir, "index", str(folder), env={"LOOKALIKE_ENGINES": json.dumps(trials.ENGINES)})
    assert f"indexed {trials.GALLERY_FILES}, unchanged 0" in first.stderr, first.stderr
    # Every file changes: each takes the next one's tile, so its features change in every engine.
    paths = sorted(folder.iterdir())
    tiles = [path.read_bytes() for path in paths]
    for path, tile in zip(paths, tiles[1:] + tiles[:1]):
        path.write_bytes(tile)

    trial = trials.index_trial(data_dir, folder, 1, 0.0)
    now = {str(path): (path.stat().st_size, path.stat().st_mtime_ns) for path in paths}
    replaced = [
        record for record in trial.acknowledged.values() if (record.size, record.mtime_ns) == now[record.file_name]
    ]
    assert trial.mid_run and 0 < len(replaced) < len(paths), "the kill must land mid-run"
    assert len(trial.acknowledged) == len(paths)  # each file's record, old or new, is there throughout
    assert trial.findings.all() == []


def test_service_killed_mid_burst(tmp_path, gallery):
    images = [path.read_bytes() for path in sorted(gallery.iterdir())[:50]]
    trial = trials.service_trial(tmp_path / "data", images, delay=0.5)
    assert trial.mid_run and trial.acknowledged, "the kill must land mid-burst"
    assert trial.findings.all() == []
    assert trial.healthy_s is not None and trial.reopen_s is not None


def test_the_checks_find_lost_half_written_and_unindexed_records(tmp_path, gallery):
    """The trials above pass only if these checks find nothing: they must find what is there."""
    tiles = sorted(gallery.iterdir())[:3]
    acknowledged = {image_id: ImageRecord(image_id, path.name) for image_id, path in enumerate(tiles)}
    with Library(tmp_path, trials.ENGINES) as library:
        for image_id, path in enumerate(tiles):
            library.add(image_id, path.read_bytes(), path.name)
        assert trials.check_library(library, acknowledged).all() == []

        library.delete(1, ["color"])  # image 1 keeps its record and its phash feature
        library.indexes["phash"].remove([2])  # the store keeps image 2, the phash index loses it
        found = trials.check_library(library, acknowledged | {7: ImageRecord(7, "never-added.jpg")})
    assert [problem.split(":")[0] for problem in found.lost] == ["1", "7"]
    assert [problem.split(":")[0] for problem in found.half_written] == ["1"]
    assert [problem.split(":")[0] for problem in found.disagreements] == ["phash", "2"]
