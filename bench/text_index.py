"""The text index (lookalike.indexes.text.TextIndex) at 100,000 images x 20 words, against SQLite FTS5.

Library: each image has 20 words in 2-4 lines (confidence 0.5-1, box heights 0.005-0.1), drawn
Zipf-like (p ~ 1 / (rank + 2.7)) from an English word list: Debian's `wamerican`
(/usr/share/dict/american-english, `apt-get install wamerican`) when present, else pseudo-words
made from seeded syllables (the report says which), the ranks a seeded permutation of the list. One
image in 10 also shows a code (a plate "AB12CDE" or a product code "SKU-48213"), one in 50 a line of
4-8 CJK characters from 300 common ones. Everything is seeded.

Measured: build (TextIndex.build from an in-memory source), RSS growth while building (psutil),
save and load time, file size; then query latency (p50/p99 of QUERIES queries each, one thread, wall
clock) for exact words, prefixes (the first 4 characters of a word of 7+), substrings (4 characters
from inside a word of 8+), a 1-edit misspelling (word of 5-7), 2 edits (word of 9+), a sound-alike
spelling (ph -> f, ck -> k, ...), 5 words of one image, and 1,000 words (of which TextIndex reads
the first 64 distinct). k = 10. Last, 1,000 new images are added and then removed one at a time.

The alternative: SQLite FTS5 (stdlib sqlite3) with its trigram tokenizer, one row per image holding
its folded words, ranked by bm25; it does substrings itself, but neither edits nor sounds, so those
queries are expanded by the same `Vocabulary` first and sent as an OR of the expansions (its
latency includes that expansion).

Target: query p50 under 20 ms on a 2-core machine.

Run: .venv/bin/python bench/text_index.py [--images 100000] [--queries 200]
"""

import argparse
import gc
import os
import sqlite3
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

import common
from lookalike.features import FeatureSpec, TextLine, TextLines
from lookalike.indexes.base import IndexSetup, Marker
from lookalike.indexes.text import MAX_QUERY_WORDS, TextIndex
from lookalike.indexes.words import Vocabulary, fold, sounds, stored_words

WORD_LIST = Path("/usr/share/dict/american-english")
WORDS_PER_IMAGE = 20
K = 10
LATENCIES = ["p50", "p99", "p50 CPU"]  # milliseconds: wall clock, and this thread's CPU time
CHANGES = 1000  # images added, then removed, one at a time
CJK_CHARACTERS = (
    "日本東京大阪中国人口山川田森林水火木金土月年時分上下左右前後内外高低長短新古明暗白黒赤青"
    "駅前出入口北南西東市町村区道路橋港空海島花鳥風雲雨雪春夏秋冬朝昼夜今週曜電話番号店名食堂"
    "料理茶酒肉魚米麺飯菓子学校会社病院銀行郵便局図書館公園駐車場禁止注意危険営業中休業案内所"
    "한국서울부산대학교병원은행우체국도서관공원주차장금지주의위험영업중휴업안내소역전출입구북남"
    "北京上海广州深圳香港台湾餐厅饭店酒店超市药店银行邮局医院学校公司地铁站出口入口停车场禁止"
    "吸烟注意安全小心地滑营业时间欢迎光临谢谢惠顾价格优惠特价新品热卖限时抢购会员专享免费送货"
)[:300]
SOUND_ALIKES = [("ph", "f"), ("ck", "k"), ("qu", "kw"), ("ee", "ea"), ("c", "k"), ("y", "i"), ("s", "z")]


def vocabulary(rng: np.random.Generator) -> tuple[list[str], str]:
    """(words in Zipf rank order, where they came from)."""
    if WORD_LIST.exists():
        words = sorted({w.strip() for w in WORD_LIST.read_text().splitlines() if w.strip().isalpha()})
        source = f"wamerican ({WORD_LIST}, {len(words):,} words without apostrophes)"
    else:
        syllables = [c + v for c in "bcdfghjklmnprstvwz" for v in ("a", "e", "i", "o", "u", "ai", "ou")]
        words = sorted({"".join(rng.choice(syllables, rng.integers(1, 5))) for _ in range(120_000)})
        source = f"generated pseudo-words ({len(words):,}; {WORD_LIST} absent)"
    return [words[i] for i in rng.permutation(len(words))], source


def code(rng: np.random.Generator) -> str:
    letters, digits = "ABCDEFGHJKLMNPRSTVWXYZ", "0123456789"
    if rng.random() < 0.5:
        pick = lambda alphabet, n: "".join(rng.choice(list(alphabet), n))  # noqa: E731
        return pick(letters, 2) + pick(digits, 2) + pick(letters, 3)
    return f"SKU-{rng.integers(10_000, 100_000)}"


def library(images: int, ranked: list[str], rng: np.random.Generator) -> list[TextLines]:
    p = 1 / (np.arange(len(ranked)) + 2.7)
    drawn = rng.choice(len(ranked), (images, WORDS_PER_IMAGE), p=p / p.sum())
    features = []
    for row in drawn:
        words = [ranked[i] for i in row]
        if rng.random() < 0.1:
            words[-1] = code(rng)
        cuts = sorted(rng.choice(np.arange(1, WORDS_PER_IMAGE), rng.integers(1, 4), replace=False))
        texts = [" ".join(part) for part in np.split(np.array(words, object), cuts)]
        if rng.random() < 0.02:
            texts[-1] = "".join(rng.choice(list(CJK_CHARACTERS), rng.integers(4, 9)))
        lines = []
        for text in texts:
            height = float(rng.uniform(0.005, 0.1))
            box = ((0.1, 0.5), (0.9, 0.5), (0.9, 0.5 + height), (0.1, 0.5 + height))
            lines.append(TextLine(text, float(rng.uniform(0.5, 1.0)), box))
        features.append(TextLines(tuple(lines)))
    return features


def queries(features: list[TextLines], ranked: list[str], count: int, rng: np.random.Generator) -> dict:
    """{kind: [(query, words its top hit should hold)]}: count queries of each kind, made from stored
    words (frequent ones more often, as in real use); misspellings are no word of the list."""
    stored = [w for f in features[:20_000] for w in stored_words(f) if w.isalpha() and w.isascii()]
    known = set(stored) | {fold(w) for w in ranked}
    pick = lambda test: [w for w in rng.permutation(np.array(stored, object)) if test(w)][:count]  # noqa: E731

    def misspelt(word: str, edits: int) -> str:
        while True:
            letters = list(word)
            for position in rng.choice(np.arange(1, len(word) - 1), edits, replace=False):
                letters[position] = "aeiou"[rng.integers(5)] if letters[position] not in "aeiou" else "x"
            if "".join(letters) not in known:
                return "".join(letters)

    def sound_alike(word: str) -> str | None:
        for before, after in SOUND_ALIKES:
            if before in word:
                changed = word.replace(before, after, 1)
                if changed not in known and sounds(changed) & sounds(word):
                    return changed
        return None

    shown = [list(stored_words(features[i]))[:5] for i in rng.choice(len(features), count, replace=False)]
    alikes = [(sound_alike(w), (w,)) for w in pick(lambda w: len(w) >= 4 and sound_alike(w))]
    many = [[w for w in rng.permutation(np.array(stored, object))[:1000]] for _ in range(max(10, count // 10))]
    return {
        "exact": [(w, (w,)) for w in pick(lambda w: True)],
        "prefix": [(w[:4], ()) for w in pick(lambda w: len(w) >= 7)],
        "substring": [(w[2:6], ()) for w in pick(lambda w: len(w) >= 8)],
        "1 edit": [(misspelt(w, 1), (w,)) for w in pick(lambda w: 5 <= len(w) <= 7)],
        "2 edits": [(misspelt(w, 2), (w,)) for w in pick(lambda w: len(w) >= 9)],
        "sound-alike": alikes,
        "5 words": [(" ".join(words), tuple(words)) for words in shown],
        "1,000 words (capped at 64)": [(" ".join(words), ()) for words in many],
    }


class Source:
    spec = FeatureSpec("text", 0, "words")

    def __init__(self, features: list[TextLines]):
        self.features = features

    def read(self, image_ids=None):
        ids = range(len(self.features)) if image_ids is None else image_ids
        return np.array(list(ids), np.int64), [self.features[i] for i in ids]

    def ids(self):
        return np.arange(len(self.features), dtype=np.int64)

    def count(self):
        return len(self.features)


class Fts5:
    """The alternative: one FTS5 trigram row per image; edits and sounds expanded by a Vocabulary."""

    def __init__(self, path: Path, features: list[TextLines]):
        self.db = sqlite3.connect(path)
        self.db.execute("CREATE VIRTUAL TABLE texts USING fts5(words, tokenize='trigram')")
        rows = [" ".join(stored_words(f)) for f in features]
        with self.db:
            self.db.executemany("INSERT INTO texts(rowid, words) VALUES (?, ?)", enumerate(rows))
            self.db.execute("INSERT INTO texts(texts) VALUES ('optimize')")
        # Its trigram vocabulary knows no words: the words come from the rows.
        self.vocabulary = Vocabulary({word for row in rows for word in row.split()})

    def search(self, text: str) -> list[tuple[int, float]]:
        terms = []
        for word in list(dict.fromkeys(fold(text).split()))[:MAX_QUERY_WORDS]:  # the same cap as TextIndex
            terms += [word, *self.vocabulary.similar(word)]
        terms = [t for t in dict.fromkeys(terms) if len(t) >= 3]  # trigrams: shorter terms match nothing
        if not terms:
            return []
        match = " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)
        return self.db.execute(
            "SELECT rowid, bm25(texts) FROM texts WHERE texts MATCH ? ORDER BY bm25(texts) LIMIT ?", (match, K)
        ).fetchall()


def top_hit_holds(index: TextIndex, features: list[TextLines], pairs: list[tuple[str, tuple]]) -> str:
    """The share of queries whose top hit holds the words they were made from ("-" where none are)."""
    checked = [(text, words) for text, words in pairs if words]
    if not checked:
        return "-"
    hits = [index.search([TextLines((TextLine(text),))], k=1) for text, _ in checked]
    held = [
        bool(h) and set(words) <= stored_words(features[h[0].image_id]).keys() for h, (_, words) in zip(hits, checked)
    ]
    return f"{np.mean(held):.2f}"


def latencies(search, asked: list[str]) -> tuple[float, float, float]:
    """(p50, p99 of wall-clock ms, p50 of this thread's CPU ms): on a shared machine the CPU time shows
    what a query costs when other processes take cores from it."""
    seconds, cpu_seconds = [], []
    for text in asked:
        started, cpu_started = time.perf_counter(), time.thread_time()
        search(text)
        seconds.append(time.perf_counter() - started)
        cpu_seconds.append(time.thread_time() - cpu_started)
    return tuple(common.percentile(values, q) * 1000 for values, q in ((seconds, 50), (seconds, 99), (cpu_seconds, 50)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    rng = np.random.default_rng(common.SEED)
    ranked, source = vocabulary(rng)
    features = library(args.images, ranked, rng)
    asked = queries(features, ranked, args.queries, rng)
    folder = Path(tempfile.mkdtemp(prefix="text-index-"))
    setup = IndexSetup(Source(features), folder / "text")
    process = psutil.Process()

    gc.collect()
    before = process.memory_info().rss
    build_s, index = common.timed(TextIndex.build, setup)
    gc.collect()
    rss_mib = (process.memory_info().rss - before) / 2**20
    save_s, _ = common.timed(index.save, Marker("bench", 1))
    size_mib = setup.file(".text").stat().st_size / 2**20
    load_s, (loaded, _) = common.timed(TextIndex.load, setup)
    probe = [TextLines((TextLine(asked["5 words"][0][0]),))]
    assert loaded.search(probe, k=K) == index.search(probe, k=K)
    del loaded
    fts_build_s, fts = common.timed(Fts5, folder / "fts.sqlite", features)
    fts_mib = (folder / "fts.sqlite").stat().st_size / 2**20

    rows = []
    for kind, pairs in asked.items():
        texts = [text for text, _ in pairs]
        ours = latencies(lambda t: index.search([TextLines((TextLine(t),))], k=K), texts)
        theirs = latencies(fts.search, texts)
        rows.append([kind, len(texts), *(f"{ms:.2f}" for ms in ours + theirs), top_hit_holds(index, features, pairs)])
    # Changes one image at a time, as the service makes them: new images with new codes in them.
    new_ids = range(args.images, args.images + CHANGES)
    added = [common.timed(index.add, np.array([i]), [f])[0] for i, f in zip(new_ids, library(CHANGES, ranked, rng))]
    removed = [common.timed(index.remove, [i])[0] for i in new_ids]
    changes = {
        name: (common.percentile(seconds, 50) * 1000, common.percentile(seconds, 99) * 1000, max(seconds) * 1000)
        for name, seconds in (("add", added), ("remove", removed))
    }

    print(f"Word list: {source}")
    print(f"{args.images:,} images x {WORDS_PER_IMAGE} words; {index.stats()['words']:,} distinct words")
    print(
        f"TextIndex: build {build_s:.1f} s, RSS +{rss_mib:.0f} MiB, save {save_s:.2f} s, load {load_s:.2f} s, "
        f"file {size_mib:.1f} MiB"
    )
    print(f"FTS5 trigram: build {fts_build_s:.1f} s, file {fts_mib:.1f} MiB")
    for name, (p50, p99, most) in changes.items():
        print(f"{name} one image ({CHANGES} times): p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {most:.1f} ms")
    print()
    headers = ["query", "n", "TextIndex p50 ms", "p99", "p50 CPU", "FTS5 p50 ms", "p99", "p50 CPU", "top hit right"]
    print(common.table(headers, rows))
    print()
    print(common.machine_markdown() + f"; os.cpu_count() {os.cpu_count()}")
    common.save_json(
        "text_index",
        {
            "word_list": source,
            "images": args.images,
            "words": index.stats()["words"],
            "build_s": build_s,
            "rss_mib": rss_mib,
            "save_s": save_s,
            "load_s": load_s,
            "file_mib": size_mib,
            "fts5_build_s": fts_build_s,
            "fts5_file_mib": fts_mib,
            "latency_ms": {
                row[0]: {"text_index": dict(zip(LATENCIES, row[2:5])), "fts5": dict(zip(LATENCIES, row[5:8]))}
                for row in rows
            },
            "changes_ms": changes,
        },
    )


if __name__ == "__main__":
    main()
