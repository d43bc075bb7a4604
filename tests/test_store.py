"""The LMDB store, and a library's indexes kept equal to it: atomicity, growth, reopening, catching up."""

import numpy as np
import pytest
from helpers import crash
from photos import encode

import lookalike.store.feature_store
from lookalike.engines import create_engine
from lookalike.errors import Conflict, LookalikeError, NotFound, StoreVersionError
from lookalike.library import Library
from lookalike.store import FeatureStore, ImageRecord

SPECS = {name: create_engine(name).spec for name in ["phash", "color"]}
rng = np.random.default_rng(7)


def random_features(n: int) -> dict[str, np.ndarray]:
    histograms = rng.dirichlet(np.full(512, 0.05), n).astype(np.float32)
    return {"phash": rng.integers(0, 256, (n, 72), dtype=np.uint8), "color": histograms}


def fill(library: Library, n: int, start: int = 0) -> dict[str, np.ndarray]:
    features = random_features(n)
    library.add_many(
        [(ImageRecord(start + i, f"img{start + i}.jpg"), {k: v[i] for k, v in features.items()}) for i in range(n)]
    )
    return features


def assert_index_equals_store(library: Library) -> None:
    for name, index in library.indexes.items():
        ids, features = library.store.read_features(name)
        assert index.ntotal == len(ids)
        for image_id, feature in zip(ids[:: max(1, len(ids) // 50)], features[:: max(1, len(ids) // 50)]):
            assert np.array_equal(index.reconstruct(int(image_id)), feature)


class TestStore:
    def test_add_is_all_or_nothing(self, tmp_path):
        store = FeatureStore(tmp_path, SPECS)
        good = random_features(1)
        bad = {"phash": good["phash"][0], "color": np.zeros(3, np.float32)}  # wrong width
        with pytest.raises(ValueError):
            store.add(ImageRecord(1, "a.jpg"), bad)
        assert store.count() == 0 and store.count("phash") == 0 and store.id_for_name("a.jpg") is None
        assert store.journal_seq("phash") == 0

    def test_conflicts(self, tmp_path):
        store = FeatureStore(tmp_path, SPECS)
        features = {k: v[0] for k, v in random_features(1).items()}
        store.add(ImageRecord(1, "a.jpg"), features)
        with pytest.raises(Conflict, match="already in engine"):
            store.add(ImageRecord(1, "a.jpg"), {"phash": features["phash"]})
        with pytest.raises(Conflict, match="already belongs to image 1"):
            store.add(ImageRecord(2, "a.jpg"), features)
        with pytest.raises(NotFound):
            store.delete(99)

    def test_record_goes_with_the_last_feature(self, tmp_path):
        store = FeatureStore(tmp_path, SPECS)
        store.add(ImageRecord(5, "x.png"), {k: v[0] for k, v in random_features(1).items()})
        assert store.delete(5, ["phash"]) == ["phash"]
        assert store.record(5) is not None and store.id_for_name("x.png") == 5
        assert store.delete(5, ["color"]) == ["color"]
        assert store.record(5) is None and store.id_for_name("x.png") is None

    def test_map_grows_by_itself(self, tmp_path, monkeypatch):
        monkeypatch.setattr(lookalike.store.feature_store, "_INITIAL_MAP_SIZE", 1 << 20)
        store = FeatureStore(tmp_path, SPECS)
        for start in range(0, 3000, 500):  # ~6 MB of colour histograms into a 1 MB map
            features = random_features(500)
            for i in range(500):
                store.add(ImageRecord(start + i, ""), {k: v[i] for k, v in features.items()})
        assert store.count("color") == 3000
        assert store._env.info()["map_size"] > 1 << 20

    def test_newer_schema_is_refused(self, tmp_path):
        store = FeatureStore(tmp_path, SPECS)
        store._write(lambda txn: txn.put(b"version", b"99", db=store._meta))
        store.close()
        with pytest.raises(StoreVersionError, match="newer lookalike"):
            FeatureStore(tmp_path, SPECS)


class TestReopen:
    def test_reopen_after_clean_close(self, tmp_path, photos):
        with Library(tmp_path, ["phash", "color"]) as library:
            library.add(1, encode(photos["astronaut"]), "astronaut.jpg")
            library.add(2, encode(photos["coffee"]), "coffee.jpg")
            library.delete(2)
        with Library(tmp_path, ["phash", "color"]) as library:
            assert library.stats()["engines"]["phash"] == {"features": 1, "indexed": 1, "model": None}
            assert library.similar_to_image("phash", encode(photos["astronaut"]), k=1)[0].image_id == 1
            assert library.store.journal_since("phash", library.store.journal_seq("phash")) == set()

    def test_changes_after_the_last_save_are_replayed_from_the_journal(self, tmp_path):
        library = Library(tmp_path, ["phash", "color"])
        fill(library, 300)
        library.checkpoint()
        fill(library, 200, start=300)
        library.delete_many(list(range(0, 50)))
        crash(library)  # no checkpoint: the saved indexes lag the store
        with Library(tmp_path, ["phash", "color"]) as library:
            assert library.store.count("phash") == 450
            assert_index_equals_store(library)

    def test_index_of_another_store_is_rebuilt(self, tmp_path):
        with Library(tmp_path / "a", ["phash", "color"]) as library:
            fill(library, 100)
        with Library(tmp_path / "b", ["phash", "color"]) as library:
            fill(library, 30)
        (tmp_path / "b/indexes/phash.faiss").write_bytes((tmp_path / "a/indexes/phash.faiss").read_bytes())
        with Library(tmp_path / "b", ["phash", "color"]) as library:
            assert library.indexes["phash"].ntotal == 30
            assert_index_equals_store(library)

    def test_missing_or_corrupt_index_is_rebuilt(self, tmp_path):
        with Library(tmp_path, ["phash", "color"]) as library:
            fill(library, 100)
        (tmp_path / "indexes/phash.faiss").unlink()
        (tmp_path / "indexes/color.faiss").write_bytes(b"not an index")
        with Library(tmp_path, ["phash", "color"]) as library:
            assert_index_equals_store(library)

    def test_one_process_per_data_dir(self, tmp_path):
        with Library(tmp_path, ["phash"]):
            with pytest.raises(LookalikeError, match="in use"):
                Library(tmp_path, ["phash"])


def test_an_image_keeps_the_digest_it_was_first_added_with(tmp_path):
    store = FeatureStore(tmp_path / "store", SPECS)
    features = random_features(1)
    try:
        store.add(ImageRecord(7, "", digest=b"a" * 32), {"phash": features["phash"][0]})
        # Added to another engine later, named, from other bytes: the name is taken, the digest kept.
        store.add(ImageRecord(7, "seven.jpg", digest=b"b" * 32), {"color": features["color"][0]})
        assert store.record(7) == ImageRecord(7, "seven.jpg", digest=b"a" * 32)
        assert store.ids_with_digest(b"a" * 32) == [7] and store.ids_with_digest(b"b" * 32) == []
        store.delete(7)
        assert store.ids_with_digest(b"a" * 32) == [] and store.same_contents() == []
    finally:
        store.close()
