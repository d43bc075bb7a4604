"""The local engine's point index: PointRanges against a brute-force map, and the index in a library:
deletes, re-adds and reopening, catching up from the journal and rebuilding after a crash, training the
compressed index while writes land, and the refusals to train.

The gallery and the crops' queries are shared with test_local_engine.py (see local_gallery.py).
"""

import io
import logging

import numpy as np
import pytest
from helpers import crash
from local_gallery import (
    TEXTURED,
    copy_of,
    crop_results,
    crops,
    found_ids,
    ids,
    misses_of,
    photos,
    sample_png,
    stored,
)
from photos import encode

from lookalike.errors import InvalidRequest
from lookalike.indexes.point_ranges import PointRanges
from lookalike.indexes.points import MIN_TRAINING_POINTS, PointIndex
from lookalike.library import Library

LOGGER = "lookalike.indexes.manager"


# -- point ranges ----------------------------------------------------------------------------------


def test_point_ranges_match_a_brute_force_map():
    rng = np.random.default_rng(11)
    ranges, owner = PointRanges(), {}  # owner: point id -> image id, for live images only
    live: dict[int, tuple[int, int]] = {}
    next_image, ends = 0, 0
    assert (ranges.lookup(np.array([-1, 0, 5])) == -1).all()  # empty
    for _ in range(300):
        if live and rng.random() < 0.4:
            gone = rng.choice(sorted(live), size=min(len(live), int(rng.integers(1, 4))), replace=False).tolist()
            released = ranges.release(gone + [10**9])  # an unknown id is ignored
            assert sorted(released) == sorted(live.pop(i) for i in gone)
            owner = {p: i for p, i in owner.items() if i not in gone}
        else:
            batch = np.arange(next_image, next_image + int(rng.integers(1, 5)))
            next_image += len(batch)
            lengths = rng.integers(0, 6, len(batch))  # empty ranges included
            starts = ranges.allocate(batch, lengths)
            assert (starts >= ends).all(), "point ids are never reused"
            for image_id, start, length in zip(batch.tolist(), starts.tolist(), lengths.tolist()):
                live[image_id] = (start, start + length)
                owner |= {p: image_id for p in range(start, start + length)}
                assert ranges.range_of(image_id) == (start, start + length)
            ends = ranges.next_point
        points = rng.integers(-3, ranges.next_point + 3, (7, 5))
        expected = np.vectorize(lambda p: owner.get(int(p), -1))(points)
        assert np.array_equal(ranges.lookup(points), expected)
        assert ranges.points == len(owner) and len(ranges) == len(live)
    assert any(start == end for start, end in live.values()), "the run should hold an empty range"
    for image_id in list(live)[:3]:
        assert ranges.range_of(image_id) == live[image_id]
    assert ranges.range_of(10**9) is None
    restored = PointRanges.from_arrays(np.load(io.BytesIO(_saved(ranges))))
    everything = np.arange(-1, ranges.next_point + 1)
    assert np.array_equal(restored.lookup(everything), ranges.lookup(everything))
    assert restored.next_point == ranges.next_point
    assert ranges.release(list(live)) and ranges.lookup(everything).max() == -1 and ranges.points == 0


def _saved(ranges: PointRanges) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **ranges.arrays())
    return buffer.getvalue()


# -- the point index in a library: deletes, reopening, crashes, training ---------------------------


def test_delete_readd_and_reopen(local_gallery_dir, tmp_path, crop_queries, caplog):
    data_dir = copy_of(local_gallery_dir, tmp_path / "data")
    some = {name: crop_queries[name] for name in ["chelsea", "coffee", "pexels-2560067", "pexels-4543103"]}
    with Library(data_dir, ["local"]) as library:
        before = crop_results(library, some)
        assert not misses_of(before), before
        descriptors = library.stats()["engines"]["local"]["descriptors"]
        chelsea = ids()["chelsea"]
        length = len(library.store.feature("local", chelsea))
        assert library.delete(chelsea) == ["local"]
        assert chelsea not in [i for i, _ in crop_results(library, {"chelsea": some["chelsea"]})["chelsea"]]
        assert library.stats()["engines"]["local"]["descriptors"] == descriptors - length
        assert library.indexes["local"].ranges.range_of(chelsea) is None
        library.add(chelsea, encode(photos()["chelsea"]), "chelsea")
        assert crop_results(library, some) == before, "re-added, it is found as before"
        assert library.stats()["engines"]["local"]["descriptors"] == descriptors
    caplog.set_level(logging.INFO, LOGGER)
    with Library(data_dir, ["local"]) as library:
        replayed = [r.message for r in caplog.records if "rebuilt" in r.message or "catching up" in r.message]
        assert not replayed, "a cleanly closed library loads its saved index as it is"
        assert crop_results(library, some) == before
        assert library.similar_to_image("local", encode(crops()["coffee"]), k=1)[0].file_name == "coffee"


def test_changes_after_the_last_save_are_caught_up_and_a_lost_index_rebuilt(local_gallery_dir, tmp_path, caplog):
    data_dir = copy_of(local_gallery_dir, tmp_path / "data")
    queries = {"graf1": sample_png("graf1.png"), "coffee": encode(crops()["coffee"])}

    def search_every_query(library: Library) -> dict[str, list[tuple[int, int]]]:
        found = {name: library.similar_to_image("local", query, k=3) for name, query in queries.items()}
        return {name: [(m.image_id, m.score) for m in matches] for name, matches in found.items()}

    library = Library(data_dir, ["local"])
    library.checkpoint()
    library.add(1, sample_png("graf3.png"), "graf3.png")
    library.delete(ids()["coffee"])
    expected = search_every_query(library)
    assert [i for i, _ in expected["graf1"][:2]] == [ids()["graf1.png"], 1]
    assert ids()["coffee"] not in [i for i, _ in expected["coffee"]]
    crash(library)  # the saved index lacks graf3 and still holds coffee
    caplog.set_level(logging.INFO, LOGGER)
    for attempt in ["catching up", "rebuilt"]:
        caplog.clear()
        with Library(data_dir, ["local"]) as library:
            assert any(attempt in r.message for r in caplog.records), [r.message for r in caplog.records]
            stats = library.stats()["engines"]["local"]
            assert stats["features"] == stats["indexed"] == 69
            assert stats["descriptors"] == sum(len(f) for f in library.store.read_features("local")[1])
            assert search_every_query(library) == expected, attempt
        (data_dir / "indexes" / "local.faiss").unlink()


def test_training_switches_to_the_compressed_index_and_it_still_finds_crops(
    local_gallery_dir, tmp_path, crop_queries, monkeypatch
):
    data_dir = copy_of(local_gallery_dir, tmp_path / "data")
    with Library(data_dir, ["local"]) as library:
        points = library.stats()["engines"]["local"]["descriptors"]
        assert library.due_for_training() == [], "a small library stays exact by itself"
        leuven, graf3 = ids()["leuvenA.jpg"], 1
        train = PointIndex.train

        def train_while_writing(setup, training):
            trained = train(setup, training)
            # Writes that land while the new index is built: the journal must replay them into it.
            library.add(graf3, sample_png("graf3.png"), "graf3.png")
            library.delete(leuven)
            return trained

        monkeypatch.setattr(PointIndex, "train", train_while_writing)
        assert library.train("local")["trained_on"] == points
        stats = library.stats()["engines"]["local"]
        assert stats["trained_on"] == points and stats["indexed"] == stats["features"] == 69
        assert stats["descriptors"] == sum(len(f) for f in library.store.read_features("local")[1])
        assert library.indexes["local"].ranges.range_of(leuven) is None
        graf1 = library.similar_to_image("local", sample_png("graf1.png"), k=2)
        assert found_ids(graf1) == [ids()["graf1.png"], graf3]

        results = crop_results(library, crop_queries)
        misses = misses_of(results)
        print(f"trained index: {len(results) - len(misses)} of {len(results)} crops found first; missed {misses}")
        assert len(misses) <= 0.15 * len(results), f"{len(misses)} of {len(results)} crops missed: {misses}"
        assert not misses.keys() & set(TEXTURED), misses
        # Removing from the trained index works as in the flat one.
        library.delete(ids()["rocket"])
        assert ids()["rocket"] not in [i for i, _ in crop_results(library, {"r": crop_queries["rocket"]})["r"]]
        some = {name: crop_queries[name] for name in TEXTURED if name != "rocket"}
        before = crop_results(library, some)
    with Library(data_dir, ["local"]) as library:
        stats = library.stats()["engines"]["local"]
        assert stats["trained_on"] == points and stats["indexed"] == 68
        assert crop_results(library, some) == before


def test_training_too_few_descriptors_is_a_clear_invalid_request(local_gallery, tmp_path):
    with Library(tmp_path, ["phash", "local"]) as library:
        library.add_many(stored(local_gallery, ["astronaut", "chelsea", "coffee"]))
        points = library.stats()["engines"]["local"]["descriptors"]
        message = f"local holds {points} descriptors; training needs {MIN_TRAINING_POINTS}"
        with pytest.raises(InvalidRequest, match=message) as raised:
            library.train("local")
        assert raised.value.status == 422
        with pytest.raises(InvalidRequest, match="nothing to train"):
            library.train("phash")
        library.maintain()  # nothing to do, and no error
        assert library.stats()["engines"]["local"]["trained_on"] == 0
        assert isinstance(library.indexes["local"], PointIndex)
