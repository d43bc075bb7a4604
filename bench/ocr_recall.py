"""OCR text engine: recall@1 of words rendered into real photos, among text-free photos, and its cost.

Corpus (seeded): RENDERED photos, each a real photo (test_photos + mvtb, seeded order, cycled) scaled to
1024 px on its long side with ONE word rendered in it (tests/words_in_photos.py): distinct lowercase
words of 5-12 letters from Debian's wamerican, none a substring of another, within 3 edits of another
or of the same sound; one photo in 10 shows a plate "AB12 CDE" instead. Height x rotation is a full
cross ({12..80} px x {0, 5, 90, 180} degrees, RENDERED / 28 each); font (18), case (lower, Title,
UPPER), dark-on-light and plate are balanced lists, each shuffled. DISTRACTORS text-free photos: the
real photos (test_photos, mvtb, OpenCV samples less those with text, NOT_TEXT_FREE) and seeded
variants of them (a 50-90% crop, mirrored half the time), all scaled to 1024 px.

Readings: TextReader.read (no confidence cutoff) of every photo at detection side 640, of the
rendered photos and SIDE_TIMED distractors also at 384, 512 and 960, two worker processes of one
ONNX Runtime thread each; cached (JSON lines) under bench/results/cache/ocr_recall/.

Queries per rendered word W (lowercase): exact W; one seeded edit (substitute, insert, delete, swap;
not a wamerican word); a sound-alike spelling by rules (ph/f, ck/k, doubled letters, y/i, s/z,
tion/shun, x/ks, a final e dropped, ...) with W's double metaphone primary code; an inner substring of
4-6 letters (W of 6+ letters; found in no other rendered word). Plates: the whole plate. Each query
is library.similar_to_text("text", q, k=10) on a Library holding every photo's lines_of(reading);
recall@1 = its photo is the top hit. Rendered photos get the highest ids, so a tie goes against them.

Run: .venv/bin/python bench/ocr_recall.py   (scripts/fetch-photos ~/.cache/lookalike/photos --with-mvtb first)
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
from lookalike.library import Library  # noqa: E402
from lookalike.models.ocr import Reading, ReadLine  # noqa: E402
from lookalike.store import ImageRecord  # noqa: E402

RENDERED, DISTRACTORS, SIDE_TIMED = 336, 2200, 100
HEIGHTS, ANGLES = (12, 16, 20, 28, 40, 56, 80), (0, 5, 90, 180)
SIDES, SIDE = (384, 512, 640, 960), 640
CUTOFFS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
KINDS = ("exact", "one edit", "sound-alike", "substring", "plate")
TARGETS = {"exact": 0.95, "one edit": 0.85, "sound-alike": 0.70, "substring": 0.90}  # at 20 px and more
WORD_LIST = Path("/usr/share/dict/american-english")
CACHE = common.CACHE_DIR / "ocr_recall"
NOT_TEXT_FREE = {  # OpenCV samples showing text (or digits, a logo, a plate, book covers)
    "imageTextN.png", "imageTextR.png", "text_defocus.jpg", "text_motion.jpg", "LinuxLogo.jpg", "box.png",
    "box_in_scene.png", "digits.png", "sudoku.png", "licenseplate_motion.jpg", "opencv-logo.png",
    "opencv-logo-white.png", "left.jpg", "right.jpg", "messi5.jpg",
}  # fmt: skip
SOUND_RULES = [("ph", "f"), ("f", "ph"), ("ck", "k"), ("c", "k"), ("k", "c"), ("y", "i"), ("i", "y"), ("z", "s"),
               ("s", "z"), ("tion", "shun"), ("x", "ks"), ("qu", "kw"), ("ee", "ea"), ("ea", "ee"), ("oo", "u")]  # fmt: skip


@dataclass(frozen=True)
class Photo:
    key: str  # names every parameter: a changed corpus never meets a stale cached reading
    base: str
    lettering: Lettering | None = None
    crop: tuple[float, float, float] | None = None  # side fraction, left and top (fractions of the slack)
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


def choose_words(dictionary: list[str], count: int, rng: random.Random) -> list[str]:
    chosen, codes = [], set()
    for word in rng.sample(dictionary, len(dictionary)):
        if len(chosen) == count:
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
    def balanced(levels):
        column = [levels[i % len(levels)] for i in range(RENDERED)]
        return rng.sample(column, RENDERED)

    font_list, cases = balanced(fonts()), balanced(["lower", "title", "upper"])
    darks, plates = balanced([True, False]), balanced([True, False])
    bases = [rendered_into[i % len(rendered_into)] for i in rng.sample(range(RENDERED), RENDERED)]
    letters = "ABCDEFGHJKLMNPRSTVWXYZ"
    rendered, texts, words = [], [], iter(words)
    for i in range(RENDERED):
        height, angle = HEIGHTS[i % len(HEIGHTS)], ANGLES[i // len(HEIGHTS) % len(ANGLES)]
        if i % 10 == 9:
            text = "".join(rng.choices(letters, k=2)) + f"{rng.randrange(100):02d} " + "".join(rng.choices(letters, k=3))
            shown = text
        else:
            text = next(words)
            shown = {"lower": text, "title": text.title(), "upper": text.upper()}[cases[i]]
        lettering = Lettering(shown, height, angle, font_list[i], darks[i], plates[i])
        style = f"{font_list[i].stem}-{'dark' if darks[i] else 'light'}-{'plate' if plates[i] else 'bare'}"
        key = f"r{i:03d}-{shown}-h{height}-a{angle}-{style}-{bases[i]}"
        rendered.append(Photo(key, bases[i], lettering))
        texts.append(text)
    distractors = [Photo(f"d-{name}", name) for name in distractor_bases]
    for i in range(DISTRACTORS - len(distractor_bases)):
        name, crop = distractor_bases[i % len(distractor_bases)], (rng.uniform(0.5, 0.9), rng.random(), rng.random())
        mirror = rng.random() < 0.5
        distractors.append(Photo(f"d{i:04d}-{name}-{crop[0]:.3f}-{crop[1]:.3f}-{crop[2]:.3f}-{mirror:d}", name, None, crop, mirror))
    return rendered, texts, distractors


def respelt(text: str) -> set[str]:
    """Spellings of `text` changed by one SOUND_RULES rule or a dropped final e."""
    variants = {text[:-1]} if text.endswith("e") else set()
    for before, after in SOUND_RULES:
        variants |= {text[:i] + after + text[i + len(before) :] for i in range(len(text)) if text.startswith(before, i)}
    return variants


def redoubled(text: str) -> set[str]:
    """Spellings of `text` with one inner consonant doubled, or a double one single."""
    return {text[:i] + text[i] + text[i:] if text[i] != text[i - 1] else text[:i] + text[i + 1 :]
            for i in range(1, len(text) - 1) if text[i] not in "aeiouy"}  # fmt: skip


def queries(text: str, known: set[str], others: list[str], rng: random.Random) -> dict[str, str]:
    """{kind: query} for one rendered word (or plate)."""
    if " " in text:
        return {"plate": text.lower()}
    asked = {"exact": text}
    while True:
        i, edit = rng.randrange(len(text)), rng.choice(["substitute", "insert", "delete", "swap"])
        letter = rng.choice(string.ascii_lowercase)
        edited = {"substitute": text[:i] + letter + text[i + 1 :], "insert": text[:i] + letter + text[i:],
                  "delete": text[:i] + text[i + 1 :], "swap": text[:i] + text[i + 1 : i + 2] + text[i] + text[i + 2 :]}[edit]  # fmt: skip
        if edited != text and edited not in known:
            asked["one edit"] = edited
            break
    once = respelt(text)  # a rule, a doubling, or a rule and then another rule or a doubling
    variants = once | redoubled(text) | {twice for v in once for twice in respelt(v) | redoubled(v)}
    code = doublemetaphone(text)[0]
    alike = [v for v in sorted(variants) if v != text and v not in known and doublemetaphone(v)[0] == code]
    if alike:  # the farthest spellings: those that no edit reaches test the match by sound
        farthest = max(OSA.distance(text, v) for v in alike)
        asked["sound-alike"] = rng.choice([v for v in alike if OSA.distance(text, v) == farthest])
    inner = [text[s : s + n] for n in (4, 5, 6) for s in range(1, len(text) - n)]
    inner = [part for part in inner if not any(part in other for other in others)]
    if len(text) >= 6 and inner:
        asked["substring"] = rng.choice(inner)
    return asked


# -- reading, in worker processes --------------------------------------------------------------------

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
    """{(key, side): reading record}, read where not cached."""
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / "readings.jsonl"
    cached = {}
    if path.exists():
        for line in path.read_text().splitlines():
            record = json.loads(line)
            cached[record["key"], record["side"]] = record
    missing = [(photo, side) for photo, side in jobs if (photo.key, side) not in cached]
    print(f"{len(jobs) - len(missing)} readings cached, {len(missing)} to read", flush=True)
    started = time.perf_counter()
    with ProcessPoolExecutor(2) as pool, path.open("a") as out:

        def save(record: dict) -> None:
            cached[record["key"], record["side"]] = record
            out.write(json.dumps(record) + "\n")
            if len(cached) % 100 == 0:
                out.flush()
                print(f"  {len(cached)}/{len(jobs)} in {time.perf_counter() - started:.0f} s", flush=True)

        pending = deque()  # a few images in flight: the next are built while the workers read
        for photo, side in missing:
            pending.append(pool.submit(read, photo.key, side, build(photo, photos)))
            if len(pending) > 8:
                save(pending.popleft().result())
        while pending:
            save(pending.popleft().result())
    return cached


def features(record: dict, cutoff: float = text_engine.MIN_CONFIDENCE):
    reading = Reading([ReadLine(t, c, np.array(corners)) for t, c, corners in record["lines"]], record["seconds"])
    saved, text_engine.MIN_CONFIDENCE = text_engine.MIN_CONFIDENCE, cutoff  # lines_of reads it at each call
    try:
        return text_engine.lines_of(reading, tuple(record["size"]))
    finally:
        text_engine.MIN_CONFIDENCE = saved


def outcomes(distractor_features: list, rendered_features: list, asked: list[dict[str, str]]) -> list[dict]:
    """One row per query: its photo's index, kind, whether its photo was the top hit, why not."""
    first = len(distractor_features)
    with tempfile.TemporaryDirectory() as folder, Library(Path(folder), ["text"]) as library:
        every = distractor_features + rendered_features
        library.add_many([(ImageRecord(i, f"p{i}"), {"text": f}) for i, f in enumerate(every)])
        rows = []
        for i, kinds in enumerate(asked):
            for kind, query in kinds.items():
                hits = library.similar_to_text("text", query, k=10)
                score = {h.image_id: h.score for h in hits}
                top = hits[0] if hits else None
                wrong = [h.score for h in hits if h.image_id < first]
                rows.append({
                    "photo": i, "kind": kind, "query": query, "found": bool(top) and top.image_id == first + i,
                    "tie_lost": bool(top) and top.image_id != first + i and score.get(first + i) == top.score,
                    "by_distractor": bool(top) and top.image_id < first,
                    "distractor_best": max(wrong, default=0.0), "top_score": top.score if top else 0.0,
                })  # fmt: skip
        return rows


def recall(rows: list[dict], **where) -> str:
    chosen = [r["found"] for r in rows if all(r[k] == v for k, v in where.items())]
    return f"{np.mean(chosen):.2f} ({len(chosen)})" if chosen else "-"


def ms(values, q: float) -> str:
    return f"{common.percentile(values, q) * 1000:.0f}"


def main() -> None:
    rng = random.Random(common.SEED)
    known = {w for w in WORD_LIST.read_text().split() if w.isascii() and w.isalpha() and w.islower()}
    photos, rendered_into, distractor_bases = all_photos()
    words = choose_words(sorted(known), RENDERED, rng)
    rendered, texts, distractors = corpus(rendered_into, distractor_bases, words, rng)
    asked = [queries(t, known, [o for o in texts if o != t], rng) for t in texts]
    timed = rng.sample(distractors, SIDE_TIMED)
    jobs = [(p, SIDE) for p in distractors + rendered] + [(p, s) for s in SIDES if s != SIDE for p in rendered + timed]
    found = readings(jobs, photos)

    def at(group: list[Photo], side: int = SIDE, cutoff: float = text_engine.MIN_CONFIDENCE) -> list:
        return [features(found[p.key, side], cutoff) for p in group]

    rows = outcomes(at(distractors), at(rendered), asked)
    for row in rows:
        lettering = rendered[row["photo"]].lettering
        row.update(height=lettering.height, angle=lettering.angle, family=lettering.font.stem.split("-")[0],
                   style=("dark" if lettering.dark_on_light else "light") + (" on plate" if lettering.plate else " bare"))  # fmt: skip
    present = [k for k in KINDS if any(r["kind"] == k for r in rows)]
    sections = {}

    def grouped(name: str, field: str, values) -> None:
        body = [[v, *(recall(rows, kind=k, **{field: v}) for k in present)] for v in values]
        sections[name] = common.table([field, *present], body)

    overall = []
    for kind in present:
        of = [r for r in rows if r["kind"] == kind]
        overall.append([kind, recall(rows, kind=kind), sum(r["by_distractor"] for r in of),
                        sum(not r["found"] and not r["by_distractor"] and r["top_score"] > 0 for r in of),
                        sum(r["top_score"] == 0 for r in of), sum(r["tie_lost"] for r in of),
                        f"{max(r['distractor_best'] for r in of):.3f}"])  # fmt: skip
    sections["recall@1 per query kind"] = common.table(
        ["kind", "recall@1 (n)", "lost to a distractor", "lost to another word", "no hit", "ties lost",
         "max distractor relevance"], overall)  # fmt: skip
    grouped("per text height (px in the 1024-px photo)", "height", HEIGHTS)
    grouped("per rotation (degrees)", "angle", ANGLES)
    grouped("per font family", "family", sorted({r["family"] for r in rows}))
    grouped("per styling", "style", ["dark on plate", "dark bare", "light on plate", "light bare"])
    tall = [r for r in rows if r["height"] >= 20]
    sections["targets (text 20 px and taller)"] = common.table(
        ["kind", "recall@1, >= 20 px", "all heights", "target", "met"],
        [[k, recall(tall, kind=k), recall(rows, kind=k), f"{t:.2f}",
          "yes" if np.mean([r["found"] for r in tall if r["kind"] == k]) >= t else "**no**"]
         for k, t in TARGETS.items() if k in present])  # fmt: skip

    cutoff_rows = []
    for cutoff in CUTOFFS:
        kept = [[line for line in found[p.key, SIDE]["lines"] if line[1] >= cutoff] for p in distractors]
        exact = outcomes(at(distractors, cutoff=cutoff), at(rendered, cutoff=cutoff),
                         [{k: q for k, q in a.items() if k in ("exact", "plate")} for a in asked])  # fmt: skip
        cutoff_rows.append([f"{cutoff:.1f}", recall(exact), sum(map(len, kept)), sum(bool(k) for k in kept)])
    sections["confidence cutoff (default side 640)"] = common.table(
        ["cutoff", "exact + plate recall@1", f"distractor lines kept (of {len(distractors)} photos)", "distractor photos with text"],
        cutoff_rows)  # fmt: skip
    side_rows = []
    exact_only = [{k: q for k, q in a.items() if k in ("exact", "plate")} for a in asked]
    for side in SIDES:
        side_out = outcomes(at(distractors), at(rendered, side), exact_only)
        for row in side_out:
            row["height"] = rendered[row["photo"]].lettering.height
        detection = lambda ps: common.median([found[p.key, side]["seconds"]["detection"] for p in ps]) * 1000  # noqa: E731
        cpu = common.median([found[p.key, side]["cpu"] for p in timed]) * 1000
        side_rows.append([side, *(recall(side_out, height=h).split()[0] for h in HEIGHTS), recall(side_out).split()[0],
                          f"{detection(rendered):.0f}", f"{detection(timed):.0f}", f"{cpu:.0f}"])  # fmt: skip
    sections["detection side: exact + plate recall@1 per height (distractors read at 640)"] = common.table(
        ["side", *(f"{h} px" for h in HEIGHTS), "all", "detection ms p50, rendered",
         f"detection ms p50, {SIDE_TIMED} distractors", f"CPU ms p50, {SIDE_TIMED} distractors"], side_rows)  # fmt: skip
    cost_rows = []
    for name, group in (("text-free distractors", distractors), ("rendered photos", rendered)):
        records = [found[p.key, SIDE] for p in group]
        cells = [f"{ms([r['cpu'] for r in records], 50)} / {ms([r['cpu'] for r in records], 90)}"]
        for step in ("detection", "direction", "recognition"):
            values = [r["seconds"][step] for r in records]
            cells.append(f"{ms(values, 50)} / {ms(values, 90)}")
        cost_rows.append([f"{name} ({len(records)})", *cells])
    sections["cost per photo at side 640, one thread: ms p50 / p90 (target: text-free CPU < 60 ms)"] = common.table(
        ["photos", "CPU (process_time)", "detection (wall)", "direction (wall)", "recognition (wall)"], cost_rows)

    sounds = sum("sound-alike" in a for a in asked)
    words_n = sum("exact" in a for a in asked)
    print(f"{len(rendered)} rendered photos ({words_n} words, {len(rendered) - words_n} plates), "
          f"{len(distractors)} distractors from {len(distractor_bases)} photos; "
          f"{sounds} of {words_n} words had a sound-alike spelling, "
          f"{sum('substring' in a for a in asked)} a unique inner substring")  # fmt: skip
    for name, markdown in sections.items():
        print(f"\n### {name}\n\n{markdown}")
    texty = sorted(((max(l[1] for l in found[p.key, SIDE]["lines"]), p.key, [l[0] for l in found[p.key, SIDE]["lines"] if l[1] >= 0.5])
                    for p in distractors if any(l[1] >= 0.5 for l in found[p.key, SIDE]["lines"])), reverse=True)  # fmt: skip
    print("\nDistractor lines kept at 0.5 (best confidence, photo, lines):")
    for confidence, key, lines in texty[:40]:
        print(f"  {confidence:.2f} {key}: {lines}")
    misses = [r for r in rows if not r["found"]]
    print(f"\nMisses ({len(misses)}): kind, query, height, angle, font, what OCR read (confidence)")
    for r in misses:
        read_lines = [(l[0], round(l[1], 2)) for l in found[rendered[r["photo"]].key, SIDE]["lines"]]
        print(f"  {r['kind']}: {r['query']!r} h{r['height']} a{r['angle']} {rendered[r['photo']].lettering.font.stem} "
              f"{r['style']}: {read_lines}")  # fmt: skip
    print("\n" + common.machine_markdown())
    common.save_json("ocr_recall", {"sections": sections, "queries": rows, "distractors_with_text": texty})


if __name__ == "__main__":
    main()
