"""OCR text engine: recall@1 of words rendered into real photos, among text-free photos, and its cost.

Corpus (seeded): RENDERED photos, each a real photo (test_photos + mvtb, seeded order, cycled) scaled to
1024 px on its long side with ONE word rendered in it (tests/words_in_photos.py): distinct lowercase
words of 5-12 letters from Debian's wamerican, none a substring of another, within 3 edits of another
or of the same sound; one photo in 10 shows a plate "AB12 CDE" instead. Height x rotation is a full
cross ({12..80} px x {0, 5, 90, 180} degrees, 12 photos each); font (18), case (lower, Title, UPPER),
dark-on-light and plate are balanced lists, each shuffled. DISTRACTORS text-free photos: the real
photos (test_photos, mvtb, the OpenCV samples but NOT_TEXT_FREE) and seeded variants of them (a
50-90% crop, mirrored half the time), all scaled to 1024 px.

Readings: TextReader.read, no confidence cutoff, of every photo at detection side 640 and of the
rendered photos also at 384, 512 and 960; two worker processes of one ONNX Runtime thread each;
cached (JSON lines) in bench/results/cache/ocr_recall/. Timings: SIDE_TIMED distractors and
TIMED_RENDERED rendered photos read again in this process alone, one thread, at every side in turn:
time.process_time around read, and Reading.seconds (wall) per step.

Queries per rendered word W (lowercase): exact W; one seeded edit (substitute, insert, delete, swap;
not a wamerican word); a sound-alike spelling with W's double metaphone primary code, made by one or
two rules (ph/f, c/k, ck/k, y/i, s/z, tion/shun, x/ks, a doubled or undoubled consonant, a final e
dropped, ...), the farthest from W in edits; an inner substring of 4-6 letters (W of 6+ letters)
found in no other rendered word. Plates: the whole plate. Each is library.similar_to_text("text", q,
k=10) on a Library holding every photo's lines_of(reading); recall@1: its photo is the top hit.

Run: .venv/bin/python bench/ocr_recall.py   (after scripts/fetch-photos ~/.cache/lookalike/photos --with-mvtb)
"""

import json
import os
import random
import string
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from doublemetaphone import doublemetaphone
from PIL import Image, ImageOps
from rapidfuzz.distance import OSA

import common

sys.path.insert(0, str(common.BENCH_DIR.parent / "tests"))
from words_in_photos import LONG_SIDE, Lettering, fonts, render  # noqa: E402

import lookalike.engines.text as text_engine  # noqa: E402
from lookalike.indexes.words import allowed_edits  # noqa: E402
from lookalike.library import Library  # noqa: E402
from lookalike.models.ocr import Reading, ReadLine  # noqa: E402
from lookalike.store import ImageRecord  # noqa: E402

RENDERED, DISTRACTORS, SIDE_TIMED, TIMED_RENDERED = 336, 2200, 100, 56
HEIGHTS, ANGLES = (12, 16, 20, 28, 40, 56, 80), (0, 5, 90, 180)
SIDES, SIDE = (384, 512, 640, 960), 640
CUTOFFS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
KINDS, EXACT = ("exact", "one edit", "sound-alike", "substring", "plate"), ("exact", "plate")
TARGETS = {"exact": 0.95, "one edit": 0.85, "sound-alike": 0.70, "substring": 0.90}  # at 20 px and more
WORD_LIST = Path("/usr/share/dict/american-english")
CACHE = common.CACHE_DIR / "ocr_recall"
NOT_TEXT_FREE = {  # OpenCV samples showing text, digits, a logo, a plate or book covers
    "imageTextN.png", "imageTextR.png", "text_defocus.jpg", "text_motion.jpg", "LinuxLogo.jpg", "box.png",
    "box_in_scene.png", "digits.png", "sudoku.png", "licenseplate_motion.jpg", "opencv-logo.png",
    "opencv-logo-white.png", "left.jpg", "right.jpg", "messi5.jpg",
}  # fmt: skip
SOUND_RULES = [("ph", "f"), ("f", "ph"), ("ck", "k"), ("c", "k"), ("k", "c"), ("y", "i"), ("i", "y"), ("z", "s"),
               ("s", "z"), ("tion", "shun"), ("x", "ks"), ("qu", "kw"), ("ee", "ea"), ("ea", "ee"), ("oo", "u")]


@dataclass(frozen=True)
class Photo:
    key: str  # names every parameter: a changed corpus never meets a stale cached reading
    base: str
    lettering: Lettering | None = None
    crop: tuple[float, float, float] | None = None  # side fraction; left and top as fractions of the slack
    mirror: bool = False


def scaled(image: Image.Image) -> Image.Image:
    factor = LONG_SIDE / max(image.size)
    return image.resize((round(image.width * factor), round(image.height * factor)), Image.Resampling.BICUBIC)


def build(photo: Photo, photos: dict[str, Image.Image]) -> Image.Image:
    image = photos[photo.base]
    if photo.lettering:
        return render(scaled(image), photo.lettering, random.Random(photo.key))
    if photo.crop:
        side, left, top = photo.crop
        width, height = round(image.width * side), round(image.height * side)
        x, y = round((image.width - width) * left), round((image.height - height) * top)
        image = image.crop((x, y, x + width, y + height))
    return scaled(ImageOps.mirror(image) if photo.mirror else image)


def all_photos() -> tuple[dict[str, Image.Image], list[str], list[str]]:
    """(every photo by name, the names words are rendered into, the names of distractors)."""
    photos = {**common.test_photos(), **common.mvtb_photos()}
    rendered_into = sorted(photos)
    for path in sorted((common.photos_dir() / "opencv").glob("*.*g")):
        if path.name not in NOT_TEXT_FREE:
            with Image.open(path) as image:
                photos[f"opencv/{path.name}"] = image.convert("RGB")
    return photos, rendered_into, sorted(photos)


def choose_words(dictionary: list[str], rng: random.Random) -> list[str]:
    chosen, codes = [], set()
    for word in rng.sample(dictionary, len(dictionary)):
        if len(chosen) == RENDERED:
            break
        code = doublemetaphone(word)[0]
        if 5 <= len(word) <= 12 and code not in codes and not any(
            word in other or other in word or OSA.distance(word, other) <= 3 for other in chosen
        ):
            chosen.append(word)
            codes.add(code)
    return chosen


def corpus(rendered_into: list[str], distractor_bases: list[str], words: list[str], rng: random.Random):
    """(rendered photos, their words or plates, distractors)."""
    balanced = lambda levels: rng.sample([levels[i % len(levels)] for i in range(RENDERED)], RENDERED)  # noqa: E731
    font_list, cases = balanced(fonts()), balanced(["lower", "title", "upper"])
    darks, plates = balanced([True, False]), balanced([True, False])
    bases = [rendered_into[i % len(rendered_into)] for i in rng.sample(range(RENDERED), RENDERED)]
    rendered, texts, words, letters = [], [], iter(words), "ABCDEFGHJKLMNPRSTVWXYZ"
    for i in range(RENDERED):
        height, angle = HEIGHTS[i % len(HEIGHTS)], ANGLES[i // len(HEIGHTS) % len(ANGLES)]
        if i % 10 == 9:
            two, number = "".join(rng.choices(letters, k=2)), f"{rng.randrange(100):02d}"
            text = shown = f"{two}{number} " + "".join(rng.choices(letters, k=3))
        else:
            text = next(words)
            shown = {"lower": text, "title": text.title(), "upper": text.upper()}[cases[i]]
        style = f"{font_list[i].stem}-{'dark' if darks[i] else 'light'}-{'plate' if plates[i] else 'bare'}"
        key = f"r{i:03d}-{shown}-h{height}-a{angle}-{style}-{bases[i]}"
        rendered.append(Photo(key, bases[i], Lettering(shown, height, angle, font_list[i], darks[i], plates[i])))
        texts.append(text)
    distractors = [Photo(f"d-{name}", name) for name in distractor_bases]
    for i in range(DISTRACTORS - len(distractor_bases)):
        name, crop = distractor_bases[i % len(distractor_bases)], (rng.uniform(0.5, 0.9), rng.random(), rng.random())
        mirror = rng.random() < 0.5
        key = f"d{i:04d}-{name}-{crop[0]:.3f}-{crop[1]:.3f}-{crop[2]:.3f}-{mirror:d}"
        distractors.append(Photo(key, name, None, crop, mirror))
    return rendered, texts, distractors


def respelt(text: str, rules: bool = True) -> set[str]:
    """Spellings of `text` changed by one SOUND_RULES rule or a dropped final e (`rules`), or else with
    one inner consonant doubled or a double one single."""
    if not rules:
        return {text[:i] + text[i] + text[i:] if text[i] != text[i - 1] else text[:i] + text[i + 1 :]
                for i in range(1, len(text) - 1) if text[i] not in "aeiouy"}  # fmt: skip
    variants = {text[:-1]} if text.endswith("e") else set()
    for before, after in SOUND_RULES:
        variants |= {text[:i] + after + text[i + len(before) :] for i in range(len(text)) if text.startswith(before, i)}
    return variants


def queries(text: str, known: set[str], others: list[str], rng: random.Random) -> dict[str, str]:
    """{kind: query} for one rendered word (or plate)."""
    if " " in text:
        return {"plate": text.lower()}
    asked = {"exact": text}
    while "one edit" not in asked:
        i, edit = rng.randrange(len(text)), rng.choice("sidw")  # substitute, insert, delete, swap
        letter = rng.choice(string.ascii_lowercase)
        edited = {"s": text[:i] + letter + text[i + 1 :], "i": text[:i] + letter + text[i:],
                  "d": text[:i] + text[i + 1 :], "w": text[:i] + text[i + 1 : i + 2] + text[i] + text[i + 2 :]}[edit]
        if edited != text and edited not in known:
            asked["one edit"] = edited
    once = respelt(text)  # a rule; a doubling; or a rule and then another rule or a doubling
    variants = once | respelt(text, False) | {twice for v in once for twice in respelt(v) | respelt(v, False)}
    code = doublemetaphone(text)[0]
    alike = [v for v in sorted(variants) if v != text and v not in known and doublemetaphone(v)[0] == code]
    if alike:  # the farthest spellings: those no edit reaches test the match by sound alone
        farthest = max(OSA.distance(text, v) for v in alike)
        asked["sound-alike"] = rng.choice([v for v in alike if OSA.distance(text, v) == farthest])
    inner = [text[s : s + n] for n in (4, 5, 6) for s in range(1, len(text) - n)]
    inner = [part for part in inner if not any(part in other for other in others)]
    if len(text) >= 6 and inner:
        asked["substring"] = rng.choice(inner)
    return asked


# -- reading ----------------------------------------------------------------------------------------

_readers = {}


def read(key: str, side: int, image: Image.Image) -> dict:
    from lookalike.engines import create_engine
    from lookalike.models import runtime

    if side not in _readers:
        runtime.set_threads(1)
        models_dir = os.environ.get("LOOKALIKE_MODELS_DIR", str(common.CACHE_DIR / "models"))
        _readers[side] = create_engine("text", {"models_dir": models_dir, "detection_side": side}).reader
        _readers[side].load()
    started = time.process_time()
    reading = _readers[side].read(image)
    cpu = time.process_time() - started
    lines = [[line.text, line.confidence, np.asarray(line.corners).tolist()] for line in reading.lines]
    return {"key": key, "side": side, "size": image.size, "cpu": cpu, "seconds": reading.seconds, "lines": lines}


def readings(jobs: list[tuple[Photo, int]], photos: dict[str, Image.Image]) -> dict[tuple[str, int], dict]:
    """{(key, side): reading record}: two worker processes read what is not cached yet."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path, cached = CACHE / "readings.jsonl", {}
    for line in path.read_text().splitlines() if path.exists() else []:
        record = json.loads(line)
        cached[record["key"], record["side"]] = record
    missing = [(photo, side) for photo, side in jobs if (photo.key, side) not in cached]
    print(f"{len(jobs) - len(missing)} readings cached, {len(missing)} to read", flush=True)
    started, pending = time.perf_counter(), deque()  # a few images in flight: the next built meanwhile
    with ProcessPoolExecutor(2) as pool, path.open("a") as out:
        for i, (photo, side) in enumerate(missing + [(None, None)] * 9):
            if photo is not None:
                pending.append(pool.submit(read, photo.key, side, build(photo, photos)))
            if pending and (len(pending) > 8 or photo is None):
                record = pending.popleft().result()
                cached[record["key"], record["side"]] = record
                out.write(json.dumps(record) + "\n")
            if i % 100 == 99:
                print(f"  {i + 1}/{len(missing)} in {time.perf_counter() - started:.0f} s", flush=True)
    return cached


def timings(group: list[Photo], photos: dict[str, Image.Image]) -> dict[int, list[dict]]:
    """{side: records} read here, alone, one thread, each photo at every side in turn (the first side
    rotating), so that load from elsewhere on the machine falls on all sides alike. Not cached."""
    for side in SIDES:
        read("warm-up", side, build(group[0], photos))
    found = {side: [] for side in SIDES}
    for i, photo in enumerate(group):
        image = build(photo, photos)
        for side in SIDES[i % len(SIDES) :] + SIDES[: i % len(SIDES)]:
            found[side].append(read(photo.key, side, image))
    return found


# -- search and report -------------------------------------------------------------------------------


def features(record: dict, cutoff: float):
    reading = Reading([ReadLine(t, c, np.array(corners)) for t, c, corners in record["lines"]], record["seconds"])
    return text_engine.lines_of(reading, tuple(record["size"]), cutoff)


def outcomes(lines: list, distractors: int, asked: list[dict[str, str]]) -> list[dict]:
    """One row per query: its photo, kind, whether its photo was the top hit, and what was. Image ids:
    the distractors first, then the rendered photos, so that a tie goes against the rendered photo."""
    with tempfile.TemporaryDirectory() as folder, Library(Path(folder), ["text"]) as library:
        library.add_many([(ImageRecord(i, f"p{i}"), {"text": f}) for i, f in enumerate(lines)])
        rows = []
        for i, kinds in enumerate(asked):
            target = distractors + i
            for kind, query in kinds.items():
                hits = library.similar_to_text("text", query, k=10)
                top = hits[0] if hits else None
                rows.append({
                    "photo": i, "kind": kind, "query": query, "found": bool(top) and top.image_id == target,
                    "tie_lost": bool(top) and any(h.image_id == target and h.score == top.score for h in hits[1:]),
                    "top": top.image_id if top else -1, "top_score": top.score if top else 0.0,
                    "distractor_best": max((h.score for h in hits if h.image_id < distractors), default=0.0),
                    "best_distractor": next((h.image_id for h in hits if h.image_id < distractors), -1),
                })  # fmt: skip
        return rows


def recall(rows: list[dict], **where) -> str:
    chosen = [r["found"] for r in rows if all(r[k] == v for k, v in where.items())]
    return f"{np.mean(chosen):.2f} ({len(chosen)})" if chosen else "-"


def ms(values, q: float = 50) -> str:
    return f"{common.percentile(values, q) * 1000:.0f}"


def is_junk(text: str) -> bool:
    """A line none of these photos holds: one character, or Chinese or Japanese (textures misread)."""
    return len(text) == 1 or any("\u3000" <= c <= "\u9fff" or "\uff00" <= c <= "\uffef" for c in text)


def query_tables(rows: list[dict], distractors: int) -> dict[str, str]:
    overall = []
    for kind in KINDS:
        missed = [r for r in rows if r["kind"] == kind and not r["found"]]
        best = max(r["distractor_best"] for r in rows if r["kind"] == kind)
        overall.append([kind, recall(rows, kind=kind), sum(0 <= r["top"] < distractors for r in missed),
                        sum(r["top"] >= distractors for r in missed), sum(r["top"] < 0 for r in missed),
                        sum(r["tie_lost"] for r in missed), f"{best:.2f}"])  # fmt: skip
    headers = ["kind", "recall@1 (n)", "missed: a distractor first", "missed: another rendered photo first",
               "missed: no hit", "ties lost", "best distractor relevance"]  # fmt: skip
    tables = {"recall@1 per query kind": common.table(headers, overall)}
    styles = ["dark on plate", "dark bare", "light on plate", "light bare"]
    for name, field, values in (("per text height (px in the 1024-px photo)", "height", HEIGHTS),
                                ("per rotation (degrees)", "angle", ANGLES),
                                ("per font family", "family", sorted({r["family"] for r in rows})),
                                ("per styling", "style", styles)):  # fmt: skip
        body = [[v, *(recall(rows, kind=k, **{field: v}) for k in KINDS)] for v in values]
        tables[name] = common.table([field, *KINDS], body)
    tall = [r for r in rows if r["height"] >= 20]
    met = lambda kind, target: np.mean([r["found"] for r in tall if r["kind"] == kind]) >= target  # noqa: E731
    tables["targets (text 20 px and taller)"] = common.table(
        ["kind", "recall@1, >= 20 px", "all heights", "target", "met"],
        [[k, recall(tall, kind=k), recall(rows, kind=k), f"{t:.2f}", "yes" if met(k, t) else "**no**"]
         for k, t in TARGETS.items()])  # fmt: skip
    return tables


def main() -> None:
    rng = random.Random(common.SEED)
    known = {w for w in WORD_LIST.read_text().split() if w.isascii() and w.isalpha() and w.islower()}
    photos, rendered_into, distractor_bases = all_photos()
    rendered, texts, distractors = corpus(rendered_into, distractor_bases, choose_words(sorted(known), rng), rng)
    asked = [queries(t, known, [o for o in texts if o != t], rng) for t in texts]
    other_sides = [(p, side) for side in SIDES if side != SIDE for p in rendered]
    found = readings([(p, SIDE) for p in distractors + rendered] + other_sides, photos)
    timed = timings(rng.sample(distractors, SIDE_TIMED) + rng.sample(rendered, TIMED_RENDERED), photos)
    load, everyone, first = os.getloadavg()[0], distractors + rendered, len(distractors)

    def run(side: int = SIDE, cutoff: float = text_engine.MIN_CONFIDENCE, kinds=KINDS) -> list[dict]:
        """The queries of `kinds` on a library of the distractors (read at 640) and the rendered photos (at `side`)."""
        lines = [features(found[p.key, SIDE if i < first else side], cutoff) for i, p in enumerate(everyone)]
        rows = outcomes(lines, first, [{k: q for k, q in a.items() if k in kinds} for a in asked])
        for row in rows:
            shown = rendered[row["photo"]].lettering
            style = ("dark" if shown.dark_on_light else "light") + (" on plate" if shown.plate else " bare")
            row.update(height=shown.height, angle=shown.angle, family=shown.font.stem.split("-")[0], style=style)
        return rows

    rows = run()
    sections = query_tables(rows, first)
    cutoff_rows = []
    for cutoff in CUTOFFS:
        kept = [[line[0] for line in found[p.key, SIDE]["lines"] if line[1] >= cutoff] for p in distractors]
        cut = run(cutoff=cutoff)
        cutoff_rows.append([f"{cutoff:.1f}", recall([r for r in cut if r["kind"] in EXACT]), recall(cut),
                            sum(map(len, kept)), sum(is_junk(t) for k in kept for t in k),
                            sum(map(bool, kept))])  # fmt: skip
    sections["confidence cutoff (side 640)"] = common.table(
        ["cutoff", "exact + plate recall@1", "all kinds recall@1", f"distractor lines kept ({first} photos)",
         "of which 1 character or CJK", "distractor photos with a line"], cutoff_rows)  # fmt: skip
    side_rows = []
    for side in SIDES:
        side_out = run(side, kinds=EXACT)
        cells = [f"{ms([r['seconds']['detection'] for r in group])} / {ms([r['cpu'] for r in group])}"
                 for group in (timed[side][:SIDE_TIMED], timed[side][SIDE_TIMED:])]  # fmt: skip
        side_rows.append([side, *(recall(side_out, height=h).split()[0] for h in HEIGHTS),
                          recall([r for r in side_out if r["height"] >= 20]).split()[0],
                          recall(side_out).split()[0], *cells])  # fmt: skip
    sections["detection side: exact + plate recall@1 per height (distractors read at 640)"] = common.table(
        ["side", *(f"{h} px" for h in HEIGHTS), ">= 20 px", "all", f"{SIDE_TIMED} text-free: detection / CPU ms p50",
         f"{TIMED_RENDERED} rendered: detection / CPU ms p50"], side_rows)  # fmt: skip
    cost_rows, both = [], lambda values: f"{ms(values)} / {ms(values, 90)}"  # noqa: E731
    for name, records, group in (("text-free", timed[SIDE][:SIDE_TIMED], distractors),
                                 ("rendered", timed[SIDE][SIDE_TIMED:], rendered)):  # fmt: skip
        steps = [both([r["seconds"][step] for r in records]) for step in ("detection", "direction", "recognition")]
        pooled = both([found[p.key, SIDE]["cpu"] for p in group])
        cpu = both([r["cpu"] for r in records])
        cost_rows.append([f"{name} ({len(records)})", cpu, *steps, f"{pooled} ({len(group)})"])
    sections["cost per photo at side 640, one thread, ms p50 / p90 (target: text-free CPU < 60 ms)"] = common.table(
        ["photos (n)", "CPU (process_time)", "detection (wall)", "direction (wall)", "recognition (wall)",
         "CPU, 2 processes at once (n)"], cost_rows)  # fmt: skip

    words = sum("exact" in a for a in asked)
    sound = [(a["exact"], a["sound-alike"]) for a in asked if "sound-alike" in a]
    print(f"{len(rendered)} rendered photos ({words} words, {len(rendered) - words} plates), {first} distractors from "
          f"{len(distractor_bases)} photos; {len(sound)} of {words} words had a sound-alike spelling "
          f"({sum(OSA.distance(w, v) <= allowed_edits(len(v)) for w, v in sound)} within the index's edit reach), "
          f"{sum('substring' in a for a in asked)} an inner substring no other rendered word holds; "
          f"load average after the timing pass {load:.1f}")  # fmt: skip
    for name, markdown in sections.items():
        print(f"\n### {name}\n\n{markdown}")

    def shown(image_id: int, cutoff: float = text_engine.MIN_CONFIDENCE) -> str:
        lines = [(t, round(c, 2)) for t, c, _ in found[everyone[image_id].key, SIDE]["lines"] if c >= cutoff]
        return f"{everyone[image_id].key[:50]} {lines[:6]}"

    print("\nExact queries a distractor answers with relevance >= 0.3: query, relevance, the distractor's lines")
    answered = [r for r in rows if r["kind"] in EXACT and r["distractor_best"] >= 0.3]
    for r in sorted(answered, key=lambda r: -r["distractor_best"]):
        print(f"  {r['query']!r} {r['distractor_best']:.2f} {shown(r['best_distractor'])}")
    misses = [r for r in rows if not r["found"]]
    print(f"\nMisses ({len(misses)}): kind, query, photo: what OCR read at 640 (every line) -> the top hit")
    for r in misses:
        top = f"{shown(r['top'])} {r['top_score']:.2f}" if r["top"] >= 0 else "none"
        print(f"  {r['kind']}: {r['query']!r} {shown(first + r['photo'], 0.0)} -> {top}")
    print("\n" + common.machine_markdown())
    common.save_json("ocr_recall", {"sections": sections, "queries": rows, "load_average": load})


if __name__ == "__main__":
    main()
