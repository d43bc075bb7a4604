"""The background pass: adds that leave the slow engines' features to later (`defer_slow`, `lookalike
index`), the backlog that keeps what is owed in the store, and the pass that makes it: searchable by
the fast engines at once, the same features in the end as a one-pass add, nothing lost or done twice
across a crash, a replacement or a delete."""

import time

import numpy as np
import pytest
from conftest import LOCAL_URL
from fastapi.testclient import TestClient
from helpers import crash, ok, upload
from photos import encode

from lookalike import indexer
from lookalike.background import catch_up
from lookalike.config import Settings
from lookalike.engines import create_engine
from lookalike.fusion import Verdict, fuse, shipped_calibration
from lookalike.gateway import reverse_search
from lookalike.indexes import Hit, Measure
from lookalike.library import Library
from lookalike.service import create_app
from lookalike.store import FeatureStore, ImageRecord

ENGINES = ["phash", "global", "local"]  # local is slow
NAMES = ["astronaut", "chelsea", "coffee", "rocket"]


def open_library(data_dir, engines=ENGINES) -> Library:
    return Library(data_dir, engines)


def same_features(a: Library, b: Library, engine: str) -> None:
    ids_a, features_a = a.store.read_features(engine)
    ids_b, features_b = b.store.read_features(engine)
    assert ids_a.tolist() == ids_b.tolist()
    if engine == "local":
        for x, y in zip(features_a, features_b):
            assert np.array_equal(x.xy, y.xy) and np.array_equal(x.descriptors, y.descriptors)
    else:
        assert np.array_equal(features_a, features_b)


def test_a_deferred_add_answers_fast_searches_at_once_and_ends_as_a_one_pass_add(tmp_path, photos):
    data = {name: encode(photos[name]) for name in NAMES}
    with open_library(tmp_path / "deferred") as deferred, open_library(tmp_path / "at_once") as at_once:
        for image_id, name in enumerate(NAMES):
            deferred.add(image_id, data[name], name, defer_slow=True)
            at_once.add(image_id, data[name], name)
        assert deferred.store.backlog() == {"phash": 0, "global": 0, "local": 4}
        assert deferred.similar_to_image("phash", data["coffee"], k=1)[0].file_name == "coffee"
        assert deferred.similar_to_image("local", data["coffee"], k=1) == []
        assert deferred.store.held(2) == data["coffee"]  # kept until its entry is done

        assert catch_up(deferred, limit=3) == {"local": 3}
        assert catch_up(deferred, limit=3) == {"local": 1}
        assert catch_up(deferred) == {}  # nothing owed, nothing done twice
        assert deferred.store.backlog()["local"] == 0 and deferred.store.held(2) is None
        assert deferred.similar_to_image("local", data["coffee"], k=1)[0].file_name == "coffee"
        for engine in ENGINES:
            same_features(deferred, at_once, engine)
        assert deferred.store.journal_seq("local") == 4  # one write per image


def test_the_backlog_survives_a_crash_and_the_pass_resumes(tmp_path, photos):
    data = {name: encode(photos[name]) for name in NAMES}
    library = open_library(tmp_path / "data")
    for image_id, name in enumerate(NAMES):
        library.add(image_id, data[name], name, defer_slow=True)
    catch_up(library, limit=1)
    crash(library)  # nothing saved but what LMDB committed

    with open_library(tmp_path / "data") as library:
        assert [p.image_id for p in library.store.pending()] == [1, 2, 3]
        assert library.similar_to_image("phash", data["rocket"], k=1)[0].file_name == "rocket"

        def killed(items):  # the process dies after making the features, before writing them
            raise KeyboardInterrupt

        library.complete, complete = killed, library.complete
        with pytest.raises(KeyboardInterrupt):
            catch_up(library)
        library.complete = complete
        assert len(library.store.pending()) == 3  # nothing lost
        while catch_up(library):
            pass
        for image_id, name in enumerate(NAMES):
            assert library.similar_to_image("local", data[name], k=1)[0].image_id == image_id
        assert library.store.journal_seq("local") == 4


def test_an_image_deleted_or_replaced_while_owed_is_left_as_it_is_now(tmp_path, photos):
    coffee, rocket, chelsea = (encode(photos[name]) for name in ("coffee", "rocket", "chelsea"))
    with open_library(tmp_path / "data") as library:
        library.add(1, coffee, defer_slow=True)
        library.add(2, rocket, defer_slow=True)
        owed = library.store.pending()
        library.delete(1)
        library.delete(2)
        library.add(2, chelsea, defer_slow=True)  # the same id, other bytes
        # A pass that read the entries before the changes writes nothing made from the old bytes.
        library.complete([(pending, {"local": library.feature_of_image("local", coffee)}) for pending in owed])
        assert library.store.feature("local", 1) is None and library.store.record(1) is None
        assert library.store.feature("local", 2) is None
        assert library.store.held(1) is None  # a deleted image's bytes go with it
        catch_up(library)
        assert library.similar_to_image("local", chelsea, k=1)[0].image_id == 2


def test_deleting_an_engine_an_image_waits_for_cancels_it(tmp_path, photos):
    with open_library(tmp_path / "data") as library:
        library.add(1, encode(photos["coffee"]), defer_slow=True)
        assert library.delete(1, ["local"]) == ["local"]
        assert library.store.pending() == [] and library.store.held(1) is None
        assert library.store.record(1) is not None  # phash and global keep it


def test_an_image_that_waits_is_not_held_against_by_the_engine_that_owes_it(tmp_path, photos):
    """The fusion counts an engine's silence as evidence against an image: not where it has no feature yet."""
    with open_library(tmp_path / "data") as library:
        library.add(1, encode(photos["coffee"]), "coffee", defer_slow=True)
        query = encode(photos["coffee"].resize((400, 300)))
        found = reverse_search(library, query)
        assert found.hits[0].image_id == 1 and found.verdict is Verdict.NEAR_DUPLICATE
    calibration = shipped_calibration()
    lists = {"phash": [Hit(1, 30, Measure.DISTANCE, "coffee")], "local": []}
    unheard = fuse(lists, calibration)[0].score
    assert fuse(lists, calibration, pending={1: ("local",)})[0].score > unheard


def test_an_image_whose_bytes_are_gone_is_given_up_not_retried(tmp_path, photos, caplog):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in ("coffee", "rocket"):
        (gallery / f"{name}.jpg").write_bytes(encode(photos[name]))
    with open_library(tmp_path / "data") as library:
        indexer.run(library, gallery, workers=1, defer=True)
        (gallery / "rocket.jpg").write_bytes(encode(photos["chelsea"]))  # changed since
        assert catch_up(library) == {"local": 2}
        assert library.store.pending() == []
        rocket = library.id_for_name(str(gallery / "rocket.jpg"))
        assert library.store.feature("local", rocket) is None
        assert "has changed since it was indexed" in caplog.text
        report = indexer.run(library, gallery, workers=1)  # the next run redoes the changed file whole
        assert report.indexed == 1
        assert library.similar_to_image("local", encode(photos["chelsea"]), k=1)[0].image_id == rocket


def test_index_makes_the_fast_engines_first_then_each_slow_one(tmp_path, photos):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in NAMES:
        (gallery / f"{name}.jpg").write_bytes(encode(photos[name]))
    stages = []
    with open_library(tmp_path / "two_passes", ENGINES + ["text"]) as library:
        report = indexer.run(library, gallery, workers=1, on_start=lambda stage, total: stages.append((stage, total)))
        assert report.indexed == 4 and library.store.pending() == []
        with open_library(tmp_path / "one_pass", ENGINES + ["text"]) as at_once:
            for name in NAMES:
                path = gallery / f"{name}.jpg"
                at_once.add(library.id_for_name(str(path)), path.read_bytes(), str(path))
            for engine in ENGINES:
                same_features(library, at_once, engine)
            assert [library.store.feature("text", i) for i in range(4)] == [
                at_once.store.feature("text", i) for i in range(4)
            ]
    assert stages == [("fast engines", 4), ("local", 4), ("text", 4)]


def test_index_resumes_its_second_pass_and_defer_leaves_it_to_the_service(tmp_path, photos):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for name in NAMES:
        (gallery / f"{name}.jpg").write_bytes(encode(photos[name]))
    library = open_library(tmp_path / "data")
    done = []

    def killed_in_the_second_pass(job, error):
        done.append(job)
        if len(done) == 6:  # the fast pass's four, then two of local's
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        indexer.run(library, gallery, workers=1, on_done=killed_in_the_second_pass)
    crash(library)
    with open_library(tmp_path / "data") as library:
        assert library.store.count() == 4
        owed = len(library.store.pending())
        assert 0 < owed < 4  # what was made before the kill was written
        stages = []
        report = indexer.run(library, gallery, workers=1, on_start=lambda stage, total: stages.append((stage, total)))
        assert report.indexed == 0 and report.unchanged == 4  # the fast pass is not redone
        assert stages == [("fast engines", 0), ("local", owed)]
        assert library.store.pending() == [] and library.store.journal_seq("local") == 4

    with open_library(tmp_path / "deferred") as library:
        indexer.run(library, gallery, workers=1, defer=True)
        assert library.store.backlog()["local"] == 4  # the files' bytes are not copied into the store
        assert all(library.store.held(i) is None for i in range(4))
        while catch_up(library):  # as the service does, from the files
            pass
        assert library.similar_to_image("local", encode(photos["rocket"]), k=1)[0].file_name.endswith("rocket.jpg")


def test_the_service_adds_with_defer_slow_and_reports_its_jobs(tmp_path, photos):
    settings = Settings(data_dir=tmp_path / "service", engines=ENGINES)
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        for image_id, name in enumerate(NAMES):
            ok(upload(client, "/images", encode(photos[name]), image_id=image_id, defer_slow="true"), 201)
        found = ok(upload(client, "/engines/phash/search", encode(photos["rocket"]), k=1))
        assert found[0]["image_id"] == 3
        deadline = time.monotonic() + 120
        while (jobs := ok(client.get("/jobs")))["local"]["backlog"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert set(jobs) == {"local"} and jobs["local"]["backlog"] == 0 and jobs["local"]["per_second"] > 0
        found = ok(upload(client, "/engines/local/search", encode(photos["rocket"]), k=1))
        assert found[0]["image_id"] == 3
        assert ok(client.get("/stats"))["backlog"]["local"] == 0
        # Its threads (one per core) each worked on other images: every feature was written once.
        assert client.app.state.library.store.journal_seq("local") == len(NAMES)


def test_the_service_resumes_a_backlog_left_by_a_crash(tmp_path, photos):
    library = open_library(tmp_path / "service")
    library.add(5, encode(photos["chelsea"]), "chelsea", defer_slow=True)
    crash(library)
    settings = Settings(data_dir=tmp_path / "service", engines=ENGINES)
    with TestClient(create_app(settings), base_url=LOCAL_URL) as client:
        deadline = time.monotonic() + 120
        while ok(client.get("/jobs"))["local"]["backlog"] and time.monotonic() < deadline:
            time.sleep(0.2)
        found = ok(upload(client, "/engines/local/search", encode(photos["chelsea"]), k=1))
        assert found[0]["image_id"] == 5


def test_an_image_owed_more_engines_waits_for_all_of_them(tmp_path, photos):
    specs = {name: create_engine(name).spec for name in ["phash", "color", "local", "text"]}
    data = encode(photos["coffee"])
    engines = {name: create_engine(name) for name in ["phash", "color"]}
    features = {name: engine.extract_many([photos["coffee"]])[0] for name, engine in engines.items()}
    store = FeatureStore(tmp_path / "store", specs)
    try:
        record = ImageRecord(1, "coffee", digest=b"d" * 32)
        store.add(record, {"phash": features["phash"]}, ("local",), data)
        store.add(record, {"color": features["color"]}, ("text",))
        assert [(p.image_id, p.engines) for p in store.pending()] == [(1, ("local", "text"))]
        assert store.held(1) == data  # the bytes stay for both
        assert store.backlog() == {"phash": 0, "color": 0, "local": 1, "text": 1}
    finally:
        store.close()
