"""The gateway over every engine: one fused reverse search that says whether an image is already here.

Every engine answers on one decode, side by side (`Library.search_all`), each with its own list as
long as the original gateway's; `fusion.fuse` merges them by calibrated evidence, and the stored
content digests find the same bytes. Where the best hit looks like the query but nothing verifies it
as a copy, the local engine matches the query's mirror image with the first few hits (its index
searches with the image as it is: a mirrored crop has no matches there), and they are fused again.
"""

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from .errors import NotFound
from .fusion import PER_ENGINE, Calibration, FusedHit, Verdict, fuse, shipped_calibration, with_matches
from .indexes import Hit, Matches
from .library import Library

MIRRORED = "local"  # the engine that matches the query's mirror image with the leading hits
LEADERS = 3  # how many of the leading hits: each costs one exact matching, the mirror image one extraction
# Fewer precise matches than this with a mirror image say nothing: a chessboard's mirrored lattice fits
# another shot's this well by chance (up to 17 in bench/copy_fusion.py), a mirrored copy's mostly far more.
MIRROR_PRECISE_AT = 20


@dataclass(frozen=True)
class ReverseSearch:
    verdict: Verdict  # the best hit's: is this image already here, and how
    hits: list[FusedHit]
    found: dict[str, list[Hit]]  # each engine's own list


def reverse_search(
    library: Library,
    data: bytes,
    k: int | None = None,
    calibration: Calibration | None = None,
    every_engine: bool = False,
) -> ReverseSearch:
    """The fused answer; with `every_engine`, `found` also holds the lists of engines whose evidence
    weighs nothing (the original gateway's answer has every engine's list), else those are not asked."""
    calibration = calibration or shipped_calibration()
    weighed = calibration.weighing(list(library.engines))
    images = library.decode(data, list(library.engines) if every_engine or not weighed else weighed)
    found = library.search_all(images, PER_ENGINE)
    exact = frozenset(library.store.ids_with_digest(hashlib.sha256(data).digest()))
    fused = _fuser(library, calibration, exact)
    hits = fused(found)
    looked_again = mirror_look(
        found, hits, calibration, lambda leaders: library.mirror_matches(MIRRORED, images[MIRRORED], leaders)
    )
    if looked_again:
        found = looked_again
        hits = fused(found)
    return _answer(library, hits[:k], found)


def stored_search(
    library: Library, image_id: int, k: int | None = None, calibration: Calibration | None = None
) -> ReverseSearch:
    """The fused answer for a stored image, from its stored features, itself left out: what a click on a
    result of the web page asks. Its mirror image is not looked at (its pixels are not kept)."""
    calibration = calibration or shipped_calibration()
    record = library.store.record(image_id)
    if record is None:
        raise NotFound(f"image {image_id} is not in the library")
    held = set(library.store.engines_of(image_id))
    engines = [name for name in calibration.weighing(list(library.engines)) or library.engines if name in held]
    found = {name: library.similar_to_id(name, image_id, PER_ENGINE) for name in engines}
    exact = frozenset(library.store.ids_with_digest(record.digest) if record.digest else []) - {image_id}
    return _answer(library, _fuser(library, calibration, exact)(found)[:k], found)


def _fuser(library: Library, calibration: Calibration, exact: frozenset[int]) -> Callable[[dict], list[FusedHit]]:
    """`fusion.fuse` of engines' lists with this library's near-duplicate threshold and backlog."""
    near = {"phash": library.engines["phash"].duplicate_threshold} if "phash" in library.engines else {}

    def fused(found: dict[str, list[Hit]]) -> list[FusedHit]:
        pending = library.store.pending_of(list({hit.image_id for hits in found.values() for hit in hits} | exact))
        return fuse(found, calibration, exact, near, pending)

    return fused


def _answer(library: Library, hits: list[FusedHit], found: dict[str, list[Hit]]) -> ReverseSearch:
    unnamed = [hit.image_id for hit in hits if not hit.evidence]  # exact copies no engine listed
    names = dict(zip(unnamed, library.store.names_for(unnamed)))
    hits = [replace(hit, file_name=names[hit.image_id] or "") if hit.image_id in names else hit for hit in hits]
    return ReverseSearch(hits[0].verdict if hits else Verdict.NONE, hits, found)


def mirror_look(
    found: dict[str, list[Hit]],
    hits: list[FusedHit],
    calibration: Calibration,
    mirror_matches: Callable[[list[int]], dict[int, Matches]],
) -> dict[str, list[Hit]] | None:
    """`found` with the MIRRORED engine's matches of the query's mirror image with the LEADERS
    (`mirror_matches` of their ids), where the best hit is similar but not verified as a copy; None
    where that is not worth the time. Only a mirrored copy's matches count, many and precise: a
    symmetric scene (a chessboard) matches another shot's mirror image too, and would add evidence for
    the wrong photo."""
    if MIRRORED not in found or not hits or hits[0].verdict is not Verdict.SIMILAR:
        return None
    matches = mirror_matches([hit.image_id for hit in hits[:LEADERS]])
    copies = {i: m for i, m in matches.items() if m.precise >= MIRROR_PRECISE_AT and not calibration.another_shot(m)}
    return with_matches(found, MIRRORED, copies)


# Engines whose text query lands in a space of meaning, beside the photos: a text query ranks photos by
# the better of their similarities. In the offline image-text space both are cosines between the query's
# MiniLM embedding and a unit vector of MiniLM embeddings (a photo's class names, or its caption).
DESCRIBED_BY = ("image_text", "caption_embedding")


@dataclass(frozen=True)
class TextHit:
    image_id: int
    file_name: str
    similarity: float  # the best of the described-by engines' cosine similarities
    engines: dict[str, float]  # every engine that listed it: its score (similarity, or words' relevance)

    def as_dict(self) -> dict:
        return {"image_id": self.image_id, "file_name": self.file_name, "similarity": self.similarity,
                "engines": self.engines}  # fmt: skip


@dataclass(frozen=True)
class TextSearch:
    hits: list[TextHit]  # the photos the text describes, best first
    found: dict[str, list[Hit]]  # each text engine's own list (tags, the words of OCR text and of captions too)


def text_search(library: Library, text: str, k: int | None = None) -> TextSearch:
    """Photos a text describes: by the better of the image-text similarity and the caption's, with each
    text engine's own list beside (a photo found only by its words is there, not in `hits`)."""
    found = library.search_all_text(text, PER_ENGINE)
    scores: dict[int, dict[str, float]] = {}
    names = {}
    for engine, hits in found.items():
        for hit in hits:
            similar = engine in DESCRIBED_BY
            scores.setdefault(hit.image_id, {})[engine] = round(1.0 - hit.score if similar else hit.score, 4)
            names.setdefault(hit.image_id, hit.file_name)
    described = [
        TextHit(i, names[i], max(s for e, s in engines.items() if e in DESCRIBED_BY), engines)
        for i, engines in scores.items()
        if any(e in DESCRIBED_BY for e in engines)
    ]
    described.sort(key=lambda hit: (-hit.similarity, hit.image_id))
    return TextSearch(described[:k], found)
