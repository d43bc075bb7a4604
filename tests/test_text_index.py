"""The text index: every way a word is found, the ranking rules, changes, its file, concurrency, and
absurd queries. It runs on an in-memory feature source: no store, no OCR."""

import random
import threading
import time

import numpy as np
import pytest
from helpers import MemorySource

from lookalike.errors import InvalidRequest
from lookalike.features import FeatureSpec, TextLine, TextLines
from lookalike.indexes.base import IndexSetup, Marker, Measure, Training
from lookalike.indexes.files import write_index_file
from lookalike.indexes.text import MAX_QUERY_WORDS, TextIndex
from lookalike.indexes.words import EXACT, ONE_EDIT, PREFIX, SOUND, SOUND_BONUS, SUBSTRING, TWO_EDITS

SPEC = FeatureSpec("text", 0, "words")


def text(*lines) -> TextLines:
    """TextLines from strings (a line without a box, confidence 1) or TextLine objects."""
    return TextLines(tuple(line if isinstance(line, TextLine) else TextLine(line) for line in lines))


def box(height: float) -> tuple:
    return ((0.1, 0.5), (0.9, 0.5), (0.9, 0.5 + height), (0.1, 0.5 + height))


def found(index: TextIndex, query: str, **options) -> list[int]:
    return [hit.image_id for hit in index.search([text(query)], **options)]


def scores(index: TextIndex, query: str) -> dict[int, float]:
    """Each found image's relevance, rounded: the weights are stored as float32."""
    return {hit.image_id: round(hit.score, 6) for hit in index.search([text(query)])}


@pytest.fixture
def make_index(tmp_path):
    def make(texts: dict[int, TextLines | str]) -> TextIndex:
        texts = {i: t if isinstance(t, TextLines) else text(t) for i, t in texts.items()}
        return TextIndex.build(IndexSetup(MemorySource(SPEC, texts), files=tmp_path / "text"))

    return make


LIBRARY = {
    1: "RE16XYZ parking",
    2: "TOKYO-STATION exit 3",
    3: "Best RESTAURANT in town",
    4: "call our PHONE line",
    5: "John SMITH & sons",
    6: "Café de Flore",
    7: "東京駅の改札",
    8: "서울역 출구",
    9: "Москва Хельсинки",
    10: "हिन्दी समाचार",
}


@pytest.fixture
def library(make_index):
    return make_index(LIBRARY)


# -- each way of finding a word -----------------------------------------------------------------------


def test_exact_words_with_case_and_accents_folded_and_punctuation_splitting(library):
    for query in ["cafe", "CAFÉ", "café", "Cafe\u0301"]:  # the last one: an accent as a combining mark
        assert found(library, query) == [6], query
    assert scores(library, "flore") == {6: EXACT}
    assert found(library, "москва") == [9]
    assert found(library, "हिन्दी") == [10]
    assert scores(library, "tokyo") == {2: EXACT}
    assert found(library, "station") == [2]
    assert found(library, "smith, john!") == [5]


def test_prefix_and_substring(library):
    assert scores(library, "RE16") == {1: PREFIX}
    assert scores(library, "16XY") == {1: SUBSTRING}
    assert scores(library, "staura") == {3: SUBSTRING}
    assert found(library, "6X") == []  # substrings need 3 characters


def test_one_edit_from_four_characters_two_from_eight(library):
    assert scores(library, "parkimg") == {1: ONE_EDIT}
    assert scores(library, "restuarant") == {3: round(ONE_EDIT + SOUND_BONUS, 6)}  # a swap of neighbours is one edit
    assert scores(library, "restaxranq") == {3: TWO_EDITS}
    assert found(library, "rextaxranq") == []  # three edits
    assert found(library, "parxinq") == []  # two edits in a 7-letter word
    assert found(library, "bext") == [3]  # "best", one edit
    assert found(library, "bxt") == []  # no edits under 4 letters


def test_sound_alikes(library):
    # Too many edits away, found by sound only; Schmidt's first code is Smith's second one.
    assert scores(library, "Schmidt") == {5: SOUND}
    # Within two edits and the same sound: a little above the edits alone, never above fewer edits.
    assert scores(library, "fone") == {4: round(TWO_EDITS + SOUND_BONUS, 6)}
    assert scores(library, "Smythe") == {5: round(TWO_EDITS + SOUND_BONUS, 6)}
    assert scores(library, "Smyth") == {5: round(ONE_EDIT + SOUND_BONUS, 6)}
    assert TWO_EDITS + SOUND_BONUS < ONE_EDIT and ONE_EDIT + SOUND_BONUS < SUBSTRING


def test_cjk_by_bigrams_and_single_characters(library):
    assert found(library, "東京") == [7]
    assert found(library, "改札") == [7]
    assert found(library, "駅") == [7]  # one character inside a longer run
    assert found(library, "東京駅") == [7]
    assert found(library, "京都") == []
    assert found(library, "서울") == found(library, "출구") == [8]


def test_a_query_image_with_many_lines(library):
    hits = library.search([text("EXIT", "tokyo station", "no entry")])
    assert [hit.image_id for hit in hits] == [2]


# -- ranking ------------------------------------------------------------------------------------------


def test_exact_above_prefix_above_substring_above_edits_above_sound(make_index):
    index = make_index({1: "phone", 2: "phones", 3: "smartphone", 4: "phine", 5: "fon", 6: "telephony"})
    assert found(index, "phone") == [1, 2, 3, 4, 5]  # "telephony" holds "phon", not "phone"
    assert scores(index, "phone")[5] == SOUND


def test_images_matching_every_query_word_come_first(make_index):
    index = make_index({1: "golden retriver", 2: "golden", 3: "retriever", 4: "golden hour retriever"})
    hits = found(index, "golden retriever")
    assert set(hits[:2]) == {1, 4}
    assert hits[0] == 4  # both exact
    assert set(hits[2:]) == {2, 3}


def test_rarer_words_count_more(make_index):
    commons = {i: f"cat picture {i}" for i in range(10, 30)}
    index = make_index({1: "cat", 2: "zebra", **commons})
    assert found(index, "cat zebra").index(2) < found(index, "cat zebra").index(1)


def test_confident_and_large_text_counts_more(make_index):
    index = make_index(
        {
            1: text(TextLine("sale", 0.4)),
            2: text(TextLine("sale", 0.9)),
            3: text(TextLine("sale", 1.0, box(0.005))),
            4: text(TextLine("sale", 1.0, box(0.1))),
            5: text(TextLine("sale", 1.0)),  # no box: full weight
        }
    )
    relevance = scores(index, "sale")
    assert relevance[4] == relevance[5] == EXACT
    assert relevance[4] > relevance[2] > relevance[3] > relevance[1]


def test_each_image_counts_once_per_query_word(make_index):
    index = make_index({1: "phone phone phones smartphone", 2: "phone"})
    assert scores(index, "phone") == {1: EXACT, 2: EXACT}


def test_relevance_of_a_partial_match(make_index):
    index = make_index({1: "alpha", 2: "beta"})
    # One of two equally rare words: (0 + 1/2) / 2.
    assert scores(index, "alpha beta") == pytest.approx({1: 0.25, 2: 0.25})


# -- k, threshold, variants ---------------------------------------------------------------------------


def test_k_and_threshold(make_index):
    index = make_index({1: "phone", 2: "phones", 3: "smartphone", 4: "fon"})
    assert found(index, "phone", k=2) == [1, 2]
    assert found(index, "phone", k=0) == []
    third = index.search([text("phone")])[2].score
    assert round(third, 6) == SUBSTRING
    assert found(index, "phone", threshold=third) == [1, 2, 3]  # inclusive
    assert found(index, "phone", threshold=third + 1e-6) == [1, 2]
    assert found(index, "phone", k=1, threshold=0.5) == [1]
    assert all(hit.measure is Measure.RELEVANCE for hit in index.search([text("phone")]))


def test_variants_keep_each_images_best(make_index):
    index = make_index({1: "phone", 2: "parking"})
    hits = index.search([text("phones"), text("parking"), text("")])
    assert {hit.image_id: hit.score for hit in hits} == {1: ONE_EDIT, 2: EXACT}
    assert [hit.image_id for hit in hits] == [2, 1]


# -- changes ------------------------------------------------------------------------------------------


def test_removed_images_are_never_found(make_index):
    index = make_index({1: "sunset beach", 2: "sunset harbour", 3: "harbour"})
    index.remove([1])
    assert found(index, "sunset") == [2]
    for query in ["beach", "beac", "bech"]:  # nor by prefix or edits
        assert found(index, query) == [], query
    assert index.stats() == {"indexed": 2, "words": 2}
    index.remove([2, 99])  # an unknown id is ignored
    assert found(index, "sunset") == found(index, "sunse") == []
    assert found(index, "harbour") == [3]
    index.remove([3])
    assert index.ntotal == 0 and index.stats()["words"] == 0
    assert found(index, "harbour") == []


def test_adding_again_replaces_and_freed_slots_are_reused(make_index):
    index = make_index({1: "old words", 2: "other"})
    index.add(np.array([1]), [text("new words")])
    assert found(index, "old") == []
    assert found(index, "new") == [1]
    index.remove([2])
    index.add(np.array([3, 3]), [text("first"), text("second")])  # twice in one batch: the last wins
    assert found(index, "first") == []
    assert found(index, "second") == [3]
    assert found(index, "other") == []
    assert index.ntotal == 2


def test_images_without_words_are_held_replaced_and_removed(make_index):
    """A photo with no text read is indexed (it has a feature), and can be replaced and removed."""
    index = make_index({1: TextLines(), 2: "harbour", 3: TextLines()})
    assert index.ntotal == 3 and found(index, "harbour") == [2]
    index.add(np.array([1, 2]), [text("harbour lights"), TextLines()])  # text found, text gone
    assert found(index, "harbour") == [1]
    index.remove([1, 2, 3])
    assert index.ntotal == 0 and index.stats()["words"] == 0


def test_many_new_words_added_one_by_one_stay_findable(make_index):
    index = make_index({})
    assert index.search([text("anything")]) == []
    for i in range(3000):  # past the vocabulary's fresh-word limit: its sorted tier is rebuilt
        index.add(np.array([i]), [text(f"word{i:05d}x")])
    index.remove(range(0, 3000, 2))
    assert scores(index, "word01235x")[1235] == EXACT
    assert found(index, "word01235x", threshold=EXACT) == [1235]
    assert found(index, "word01234x", threshold=EXACT) == []
    assert found(index, "01235") == [1235]
    assert found(index, "word01235y")[0] == 1235
    for query in ["word0123", "ord012", "word01236y"]:  # prefix, substring, edits: only the odd ones remain
        assert found(index, query) and all(image_id % 2 for image_id in found(index, query)), query
    assert index.stats() == {"indexed": 1500, "words": 1500}


# -- building, training, the file ---------------------------------------------------------------------

QUERIES = ["cafe", "RE16", "16XY", "restuarant", "fone", "Smyth", "東京", "駅", "tokyo station exit", "москва"]


def test_build_equals_adding_one_by_one(tmp_path, make_index):
    built = make_index(LIBRARY)
    one_by_one = TextIndex(IndexSetup(MemorySource(SPEC), files=tmp_path / "other"))
    for image_id in random.Random(0).sample(sorted(LIBRARY), len(LIBRARY)):
        one_by_one.add(np.array([image_id]), [text(LIBRARY[image_id])])
    assert one_by_one.stats() == built.stats()
    for query in QUERIES:
        assert one_by_one.search([text(query)]) == built.search([text(query)]), query


def test_save_and_load_keep_marker_and_results(library):
    marker = Marker("store-uuid", 42)
    library.remove([10])  # a freed slot travels too
    library.save(marker)
    loaded, loaded_marker = TextIndex.load(library.setup)
    assert loaded_marker == marker
    assert loaded.stats() == library.stats()
    for query in QUERIES:
        assert loaded.search([text(query)]) == library.search([text(query)]), query
    loaded.remove([7])
    loaded.add(np.array([11]), [text("Café Central")])
    assert found(loaded, "東京") == []
    assert found(loaded, "cafe") == [6, 11]
    assert not library.setup.file(".text.tmp").exists()


def test_load_refuses_missing_foreign_and_broken_files(tmp_path, library):
    path = library.setup.file(".text")
    assert TextIndex.load(library.setup) is None  # not saved yet
    library.save(Marker("u", 1))
    foreign = MemorySource(SPEC)
    foreign.spec = FeatureSpec("text", 0, "words", model="other")
    assert TextIndex.load(IndexSetup(foreign, files=tmp_path / "text")) is None
    good = path.read_bytes()
    for cut in (len(good) // 2, len(good) - 100):
        path.write_bytes(good[:cut])
        assert TextIndex.load(library.setup) is None, cut
    path.write_bytes(b"garbage" * 100)
    assert TextIndex.load(library.setup) is None
    write_index_file(path, SPEC, {"marker": {"store_uuid": "u", "seq": 1}, "format": 1}, extra=b"not arrays")
    assert TextIndex.load(library.setup) is None


def test_train_refuses_and_nothing_needs_training(library):
    with pytest.raises(InvalidRequest, match="nothing to train"):
        TextIndex.train(library.setup, Training())
    assert library.needs_training() is False
    assert library.measure is Measure.RELEVANCE


# -- concurrency --------------------------------------------------------------------------------------


def test_searches_run_while_images_come_and_go(make_index):
    index = make_index({i: f"stable{i} common" for i in range(200)})
    errors: list[BaseException] = []
    searches, stop = [], threading.Event()

    def searching():
        try:
            while not stop.is_set():
                hits = index.search([text("common stable7 churn")], k=5)
                assert hits and hits[0].image_id == 7
                searches.append(1)  # back to back: a waiting change still gets its turn (locks.py)
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    def churning(offset: int):
        try:
            for round_ in range(30):
                while len(searches) < round_ and not errors:  # searches and changes interleave, however slow
                    time.sleep(0.001)
                ids = np.arange(1000 + offset * 100, 1000 + offset * 100 + 20)
                index.add(ids, [text(f"churn{round_} word{i}") for i in ids])
                index.remove(ids[::2].tolist())
        except BaseException as error:  # reported by the assertion below
            errors.append(error)

    searchers = [threading.Thread(target=searching) for _ in range(4)]
    writers = [threading.Thread(target=churning, args=(offset,)) for offset in range(2)]
    for thread in searchers + writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    for thread in searchers:
        thread.join()
    assert errors == []
    assert len(searches) >= 29
    assert index.ntotal == 200 + 2 * 10
    assert found(index, "stable7", threshold=EXACT) == [7]
    assert sorted(found(index, "churn29", threshold=EXACT)) == [*range(1001, 1020, 2), *range(1101, 1120, 2)]
    assert found(index, "churn28", threshold=EXACT) == []


# -- absurd queries -----------------------------------------------------------------------------------

ABSURD = [
    TextLines(),
    text(""),
    text("   \t\n  "),
    text("a" * 10_000),
    text(" ".join(f"w{i}" for i in range(1000))),
    text("".join(chr(random.Random(0).randrange(0x20, 0x2FFFF)) for _ in range(10_000))),
    text("\x00\x01\x1b[31m\x7f\u200b\ufeff"),
    text("مرحبا بالعالم", "สวัสดีชาวโลก", "🙂🙃💥", "‮evil‬"),
    text(*["restaurant"] * 5000),
    text("".join(random.Random(1).choice("東京駅改札서울역") for _ in range(10_000))),
]


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    """2,000 images of 20 random words each, from 5,000 made-up ones (codes among them)."""
    rng = random.Random(0)
    made_up = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=rng.randint(2, 12))) for _ in range(5000)]
    texts = {i: text(" ".join(rng.choices(made_up, k=20))) for i in range(2000)}
    return TextIndex.build(IndexSetup(MemorySource(SPEC, texts), files=tmp_path_factory.mktemp("crowded") / "text"))


@pytest.mark.parametrize("query", ABSURD, ids=range(len(ABSURD)))
def test_absurd_queries_are_bounded(crowded, query):
    started = time.perf_counter()
    hits = crowded.search([query], k=10)
    assert time.perf_counter() - started < 1.0
    assert len(hits) <= 10
    if not query.text.strip():
        assert hits == []


def test_control_characters_are_ignored(library):
    assert found(library, "ca\x00f\u200be") == [6]
    assert found(library, "\x1btokyo\x07") == [2]


def test_only_the_first_distinct_query_words_count(library):
    filler = " ".join(f"filler{i}" for i in range(MAX_QUERY_WORDS))
    assert found(library, "tokyo " + filler) == [2]
    assert found(library, filler + " tokyo") == []
