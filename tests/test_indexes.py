"""One contract over every kind of index in every backend (`lookalike.indexes.INDEX_KINDS`, and the
Milvus kinds against a Milvus Lite the tests start), then each kind's own checks.

Each kind gets features made here, such that every stored feature, used as the query, finds its own
image first: random codes, histograms and unit vectors; keypoints with random descriptors, verified by
counting identical descriptors; texts with a word of their own. The contract: add, remove, search by k
and by threshold, save and load with the marker, build from the store, journal replay after a crash
and rebuild of a lost file (through `IndexManager` over a real store), and searches concurrent with
changes.
"""

import threading
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
from helpers import MemorySource

from lookalike.features import FeatureSpec, Keypoints, Matches, TextLine, TextLines
from lookalike.indexes import INDEX_KINDS, IndexSetup, Marker, Measure, Training, index_kind, milvus_kinds
from lookalike.indexes import points as points_module
from lookalike.indexes import vectors as vectors_module
from lookalike.indexes.manager import IndexManager
from lookalike.indexes.milvus import Collection, Milvus
from lookalike.indexes.templates import train_template
from lookalike.indexes.vectors import VectorIndex
from lookalike.store import FeatureStore, ImageRecord

COUNT = 60
IDS = [1000 + 7 * i for i in range(COUNT)]  # not 0..n-1: image ids are not positions in any index


def codes(rng, n):
    return list(rng.integers(0, 256, (n, 72), dtype=np.uint8))


def histograms(rng, n):
    return list(rng.dirichlet(np.full(512, 0.05), n).astype(np.float32))


def unit_vectors(rng, n):
    vectors = rng.normal(size=(n, 64)).astype(np.float32)
    return list(vectors / np.linalg.norm(vectors, axis=1, keepdims=True))


def keypoints(rng, n):
    return [
        Keypoints(rng.uniform(0, 500, (40, 2)).astype(np.float32), rng.integers(0, 256, (40, 32), dtype=np.uint8))
        for _ in range(n)
    ]


def identical_descriptors(query: Keypoints, candidates: list[Keypoints]) -> list[Matches]:
    """A stand-in for geometric verification: how many query descriptors each candidate has exactly."""
    found = []
    for stored in candidates:
        shared = {row.tobytes() for row in stored.descriptors}
        same = sum(row.tobytes() in shared for row in query.descriptors)
        found.append(Matches(same, same))
    return found


SYLLABLES = ["ka", "lo", "mi", "ru", "te", "zo", "pan", "vel", "dor", "ish"]


def texts(rng, n):
    """Each text: a word of its own (made of syllables, so it reads as a word) and two shared ones."""
    found = []
    for i in range(n):
        own = "".join(SYLLABLES[int(d)] for d in f"{i:03d}") + "x"
        shared = [rng.choice(["station", "market", "garden", "harbour"]) for _ in range(2)]
        found.append(TextLines((TextLine(f"{own} {' '.join(shared)}", 0.9, ((0, 0), (1, 0), (1, 0.2), (0, 0.2))),)))
    return found


@dataclass(frozen=True)
class Case:
    name: str
    spec: FeatureSpec
    make: object  # (rng, n) -> features
    verify: object = None
    milvus: Milvus | None = None  # the Milvus holding its indexes; None: FAISS

    @property
    def backend(self) -> str:
        return "faiss" if self.milvus is None else "milvus"

    def features(self, seed: int = 0, n: int = COUNT) -> dict[int, object]:
        return dict(zip(IDS[:n], self.make(np.random.default_rng(seed), n)))


CASES = [
    Case("binary", FeatureSpec("binary", 576, "hamming"), codes),
    Case("l1", FeatureSpec("float", 512, "l1"), histograms),
    Case("embedding", FeatureSpec("float", 64, "ip"), unit_vectors),
    Case("points", FeatureSpec("points", 32, "l2"), keypoints, identical_descriptors),
    Case("text", FeatureSpec("text", 0, "words"), texts),
]


# Texts are indexed by the same TextIndex in both backends.
IN_MILVUS = [case for case in CASES if case.spec.kind != "text"]


def test_every_index_kind_has_a_case():
    assert {case.spec.kind for case in CASES} == set(INDEX_KINDS)
    assert {case.spec.kind for case in IN_MILVUS} == set(milvus_kinds()) - {"text"}


@pytest.fixture(scope="session")
def milvus_lite(tmp_path_factory) -> str:
    """A Milvus Lite database file: pymilvus starts its embedded server on first connection."""
    return str(tmp_path_factory.mktemp("milvus") / "indexes.db")


@pytest.fixture
def milvus(milvus_lite):
    """A connection whose collections are this test's alone."""
    connection = Milvus(milvus_lite, prefix=f"t{uuid.uuid4().hex[:12]}_")
    yield connection
    connection.close()


@pytest.fixture(
    params=[*CASES, *(replace(case, milvus=True) for case in IN_MILVUS)],
    ids=lambda case: case.name + ("-milvus" if case.milvus else ""),
)
def case(request) -> Case:
    return replace(request.param, milvus=request.getfixturevalue("milvus")) if request.param.milvus else request.param


def setup_of(case: Case, features: dict, files: Path | None = None) -> IndexSetup:
    if case.milvus and files is None:
        files = Path("engine")  # a collection is named for its engine, saved or not
    return IndexSetup(MemorySource(case.spec, features), files, verify=case.verify, milvus=case.milvus)


def lose(case: Case, setup: IndexSetup) -> None:
    """What a lost index looks like: its files torn, or its collection dropped."""
    if case.milvus:
        Collection(setup).drop()
    for path in setup.files.parent.glob(setup.files.name + "*"):
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def filled(case: Case, features: dict, files: Path | None = None):
    index = index_kind(case.spec, case.backend)(setup_of(case, features, files))
    index.add(np.array(list(features), np.int64), list(features.values()))
    return index


def best_first(hits) -> bool:
    scores = [hit.score for hit in hits]
    return scores == sorted(scores, reverse=hits[0].measure.higher_is_better if hits else False)


def answers(index, features: dict, k: int = 3) -> dict[int, list[tuple[int, float]]]:
    return {i: [(h.image_id, round(h.score, 5)) for h in index.search([f], k)] for i, f in features.items()}


class TestEveryIndexKind:
    def test_each_feature_finds_its_own_image_first(self, case):
        features = case.features()
        index = filled(case, features)
        assert index.ntotal == COUNT and index.stats()["indexed"] == COUNT
        for image_id, feature in features.items():
            hits = index.search([feature], k=3)
            assert hits and hits[0].image_id == image_id, (image_id, hits)
            assert all(hit.measure == index.measure for hit in hits) and best_first(hits)
            assert len(hits) <= 3 and len({hit.image_id for hit in hits}) == len(hits)

    def test_threshold_returns_exactly_those_scoring_as_well(self, case):
        features = case.features()
        index = filled(case, features)
        query = features[IDS[5]]
        everything = index.search([query])  # neither k nor threshold: every hit
        assert everything[0].image_id == IDS[5] and best_first(everything)
        for cut in (everything[0].score, everything[len(everything) // 2].score):
            within = index.search([query], threshold=cut)
            passing = [h.image_id for h in everything if index.measure.passes(h.score, cut)]
            assert [h.image_id for h in within] == passing
            assert index.search([query], k=1, threshold=cut)[0].image_id == IDS[5]

    def test_variants_keep_each_image_at_its_best(self, case):
        features = case.features()
        index = filled(case, features)
        hits = index.search([features[IDS[1]], features[IDS[2]]], k=2)
        assert {hit.image_id for hit in hits} == {IDS[1], IDS[2]}

    def test_removed_images_are_never_found(self, case):
        features = case.features()
        index = filled(case, features)
        gone = IDS[:10]
        index.remove(gone + [99])  # an id it never held is ignored
        assert index.ntotal == COUNT - 10
        for image_id in gone:
            assert image_id not in [hit.image_id for hit in index.search([features[image_id]])]
        assert index.search([features[IDS[20]]], k=1)[0].image_id == IDS[20]
        index.add(np.array(gone[:1]), [features[gone[0]]])  # and it can come back
        assert index.search([features[gone[0]]], k=1)[0].image_id == gone[0]

    def test_an_empty_index_finds_nothing(self, case):
        index = index_kind(case.spec, case.backend)(setup_of(case, {}))
        assert index.ntotal == 0
        assert index.search([case.features(n=1)[IDS[0]]], k=5) == []

    def test_save_and_load_keep_the_marker_and_the_answers(self, case, tmp_path):
        features = case.features()
        index = filled(case, features, tmp_path / "engine")
        index.save(Marker("store-uuid", 42))
        loaded, marker = index_kind(case.spec, case.backend).load(setup_of(case, features, tmp_path / "engine"))
        assert marker == Marker("store-uuid", 42) and loaded.ntotal == COUNT
        assert answers(loaded, features) == answers(index, features)

    def test_load_refuses_what_it_cannot_trust(self, case, tmp_path):
        kind = index_kind(case.spec, case.backend)
        assert kind.load(setup_of(case, {}, tmp_path / "missing")) is None
        index = filled(case, case.features(), tmp_path / "engine")
        assert kind.load(setup_of(case, {}, tmp_path / "engine")) is None  # never saved
        index.save(Marker("store-uuid", 1))
        another = FeatureSpec(case.spec.kind, case.spec.dim, case.spec.metric, model="another")
        other = replace(case, spec=another)
        assert kind.load(setup_of(other, {}, tmp_path / "engine")) is None  # made for another feature
        lose(case, setup_of(case, {}, tmp_path / "engine"))
        assert kind.load(setup_of(case, {}, tmp_path / "engine")) is None

    def test_build_from_the_store_equals_adding_one_by_one(self, case, tmp_path):
        features = case.features()
        built = index_kind(case.spec, case.backend).build(setup_of(case, features, tmp_path / "built"))
        assert built.ntotal == COUNT
        assert answers(built, features) == answers(filled(case, features, tmp_path / "filled"), features)

    def test_nothing_to_ask_for_untrained(self, case):
        assert filled(case, case.features()).needs_training() is False

    def test_searches_run_while_images_are_added_and_removed(self, case):
        features = case.features()
        index = filled(case, dict(list(features.items())[:30]))
        later = dict(list(features.items())[30:])
        errors = []

        def search() -> None:
            try:
                for _ in range(20):
                    assert index.search([features[IDS[3]]], k=1)[0].image_id == IDS[3]
            except Exception as exc:  # noqa: BLE001 - reported below, whatever it is
                errors.append(exc)

        def change() -> None:
            for image_id, feature in later.items():
                index.add(np.array([image_id]), [feature])
            index.remove(list(later)[:10])

        threads = [threading.Thread(target=search) for _ in range(3)] + [threading.Thread(target=change)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert not errors, errors
        assert index.ntotal == COUNT - 10


# -- through the manager, over a real store -----------------------------------------------------


class Store:
    """A FeatureStore of one engine, written to as the library writes: store first, then the index."""

    def __init__(self, case: Case, path: Path):
        self.case, self.path = case, path
        self.store = FeatureStore(path / "store", {"engine": case.spec})
        self.manager = IndexManager(self.store, {"engine": self.setup()}, threading.Lock())

    def setup(self) -> IndexSetup:
        return IndexSetup(
            self.store.source("engine"), self.path / "engine", verify=self.case.verify, milvus=self.case.milvus
        )

    def add(self, features: dict) -> None:
        self.store.add_many([(ImageRecord(i, f"{i}.jpg"), {"engine": f}) for i, f in features.items()])
        self.manager["engine"].add(np.array(list(features), np.int64), list(features.values()))

    def delete(self, image_ids: list[int]) -> None:
        self.store.delete_many(image_ids)
        self.manager["engine"].remove(image_ids)

    def crash(self) -> None:
        self.store.close()  # what LMDB committed stays; nothing else is saved

    def close(self) -> None:
        self.manager.checkpoint()
        self.store.close()


def equals_its_store(index, features: dict) -> None:
    """Every stored feature is found first; `features` holds exactly the stored ones."""
    assert index.ntotal == len(features)
    for image_id, feature in features.items():
        assert index.search([feature], k=1)[0].image_id == image_id


class TestEveryIndexKindInALibrary:
    def test_changes_after_the_last_checkpoint_are_replayed_from_the_journal(self, case, tmp_path, caplog):
        features = case.features()
        store = Store(case, tmp_path)
        store.add(dict(list(features.items())[:40]))
        store.manager.checkpoint()
        store.add(dict(list(features.items())[40:]))
        store.delete(IDS[:5])
        store.crash()  # the saved index lacks the last 20 and still holds the 5 deleted
        caplog.set_level("INFO", "lookalike.indexes.manager")
        reopened = Store(case, tmp_path)
        assert any("catching up 25 changed images" in r.message for r in caplog.records), caplog.text
        equals_its_store(reopened.manager["engine"], {i: f for i, f in features.items() if i not in IDS[:5]})
        for image_id in IDS[:5]:
            assert image_id not in [h.image_id for h in reopened.manager["engine"].search([features[image_id]])]
        reopened.close()

    def test_a_lost_or_foreign_index_is_rebuilt(self, case, tmp_path):
        features = case.features()
        store = Store(case, tmp_path / "a")
        store.add(features)
        store.close()
        files = list((tmp_path / "a").glob("engine*"))
        assert files or case.milvus, "the index was saved"
        (tmp_path / "b").mkdir()
        for path in files:  # another store's index, however fresh, is not this one's
            (tmp_path / "b" / path.name).write_bytes(path.read_bytes())
        other = Store(case, tmp_path / "b")  # in Milvus, b finds a's collection: same engine, same prefix
        assert other.manager["engine"].ntotal == 0
        other.add(dict(list(features.items())[:10]))
        equals_its_store(other.manager["engine"], dict(list(features.items())[:10]))
        other.close()
        equals_its_store(Store(case, tmp_path / "a").manager["engine"], features)  # Milvus: now b's, rebuilt
        lose(case, store.setup())
        equals_its_store(Store(case, tmp_path / "a").manager["engine"], features)

    def test_stats_count_the_stored_features_and_the_indexed(self, case, tmp_path):
        store = Store(case, tmp_path)
        store.add(case.features(n=12))
        stats = store.manager.stats("engine")
        assert stats["features"] == stats["indexed"] == 12
        store.close()


# -- each kind's own ------------------------------------------------------------------------------


def test_an_embedding_index_rebuilt_after_a_crash_between_template_and_index(tmp_path, monkeypatch):
    """Training saves the new template before the checkpoint saves the index made from it: a crash
    between them leaves an index file naming the old template, which must be rebuilt, not served."""
    monkeypatch.setattr(vectors_module, "MIN_WHITENING_IMAGES", 40)
    case = CASES[2]
    features = case.features()
    store = Store(case, tmp_path)
    store.add(features)
    store.manager.train("engine", Training(whiten=True))
    store.close()
    old_index = (tmp_path / "engine.faiss").read_bytes()
    store = Store(case, tmp_path)
    assert store.manager["engine"].stats()["whitened_dims"] == COUNT // 2  # loaded with its template
    store.add({7: features[IDS[0]] * -1})  # the library changes, and is trained again
    store.manager.train("engine", Training(whiten=True))
    expected = answers(store.manager["engine"], features)
    store.close()
    (tmp_path / "engine.faiss").write_bytes(old_index)  # as if the crash came before the checkpoint
    reopened = Store(case, tmp_path)
    assert reopened.manager["engine"].ntotal == COUNT + 1
    assert answers(reopened.manager["engine"], features) == expected


def test_training_back_to_exact_removes_the_template(tmp_path, monkeypatch):
    monkeypatch.setattr(vectors_module, "MIN_WHITENING_IMAGES", 40)
    case = CASES[2]
    store = Store(case, tmp_path)
    store.add(case.features())
    store.manager.train("engine", Training(whiten=True))
    assert (tmp_path / "engine.template.faiss").exists()
    assert store.manager.train("engine", Training()).stats() == {"indexed": COUNT}
    assert not (tmp_path / "engine.template.faiss").exists()
    store.close()


@pytest.mark.parametrize("dims", [384, 998])  # 998 (tags): no PQ code count divides it, scalar codes instead
def test_a_compressed_index_re_scores_its_candidates_exactly(dims):
    spec = FeatureSpec("float", dims, "ip")
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(3000, dims)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = np.arange(3000, dtype=np.int64)
    source = MemorySource(spec, dict(zip(ids.tolist(), vectors)))
    index = VectorIndex(IndexSetup(source, None), template=train_template(spec, vectors, None, compressed=True))
    index.add(ids, vectors)
    found = index.search([vectors[7]], 3)
    assert found[0].image_id == 7 and found[0].score == pytest.approx(0, abs=1e-5)  # exact, not PQ's estimate
    assert [n.score for n in found[1:]] == pytest.approx(
        [1 - float(vectors[7] @ source.features[n.image_id]) for n in found[1:]]
    )
    del source.features[7]  # deleted from the store before the index hears of it: dropped, not misread
    assert 7 not in [n.image_id for n in index.search([vectors[7]], 3)]


def test_a_keypoint_many_images_match_alike_shares_its_vote_among_them(monkeypatch):
    """A stamp on more images than are verified per query: its keypoints match them all about equally
    and split their votes, so the one image holding the query's own keypoints is still verified."""
    rng = np.random.default_rng(5)

    def noisy(descriptors):  # the same pattern, drawn again: near, not identical
        return np.clip(descriptors + rng.integers(-3, 4, descriptors.shape), 0, 255).astype(np.uint8)

    def at_random(descriptors):
        return Keypoints(rng.uniform(0, 500, (len(descriptors), 2)).astype(np.float32), descriptors)

    stamp, own = rng.integers(0, 256, (60, 32), dtype=np.uint8), rng.integers(0, 256, (40, 32), dtype=np.uint8)
    stored = {IDS[0]: at_random(own)}
    stored |= {i: at_random(np.concatenate([noisy(stamp), rng.integers(0, 256, (20, 32), np.uint8)])) for i in IDS[1:]}
    assert len(stored) - 1 > points_module.CANDIDATES
    index = filled(CASES[3], stored)
    query = at_random(np.concatenate([noisy(stamp), own[:6]]))
    assert IDS[0] in [hit.image_id for hit in index.search([query])]
    monkeypatch.setattr(points_module, "BURST_RATIO", 1e9)  # each keypoint's vote whole for every image it hits
    assert IDS[0] not in [hit.image_id for hit in index.search([query])]


@pytest.fixture(params=["faiss", "milvus"])
def vector_index(request):
    """An empty vector index of `spec` over `features` in each backend."""

    def make(spec: FeatureSpec, features: dict):
        milvus = request.getfixturevalue("milvus") if request.param == "milvus" else None
        return index_kind(spec, request.param)(IndexSetup(MemorySource(spec, features), Path("engine"), milvus=milvus))

    return make


def test_l1_threshold_search_is_exact(vector_index):
    """Exact in Milvus too, which has no L1: its range search by the square roots' L2 finds a superset."""
    features = histograms(np.random.default_rng(7), 2000)
    index = vector_index(CASES[1].spec, dict(zip((np.arange(2000) * 3).tolist(), features)))
    index.add(np.arange(2000) * 3, np.array(features))
    query = features[0]
    truth = np.abs(np.array(features) - query).sum(axis=1)
    threshold = float(np.sort(truth)[300])  # needs several rounds of growing k
    found = index.search([query], threshold=threshold)
    assert {n.image_id for n in found} == set(np.flatnonzero(truth <= threshold) * 3)
    assert [n.score for n in found] == sorted(n.score for n in found)


def test_hamming_threshold_is_inclusive_and_variants_merge(vector_index):
    index = vector_index(CASES[0].spec, {})
    stored = np.array(codes(np.random.default_rng(7), 500))
    index.add(np.arange(500), stored)
    near = stored[0].copy()
    near[0] ^= 0b111  # 3 bits from image 0
    found = index.search([near, stored[1]], threshold=3)
    assert {(n.image_id, n.score) for n in found} == {(0, 3.0), (1, 0.0)}
    assert [n.image_id for n in index.search([near, stored[1]], 2)] == [1, 0]


def test_measures_say_which_way_is_better():
    assert Measure.DISTANCE.passes(0.2, 0.3) and not Measure.DISTANCE.passes(0.4, 0.3)
    assert Measure.MATCHES.passes(12, 8) and not Measure.MATCHES.passes(7, 8)
    assert Measure.RELEVANCE.passes(0.5, 0.5) and Measure.RELEVANCE.higher_is_better


def test_an_unknown_feature_kind_has_no_index():
    with pytest.raises(ValueError, match="no index kind for 'graph'"):
        index_kind(FeatureSpec("graph", 3, "l2"))
