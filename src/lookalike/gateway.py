"""The gateway over every engine: one fused reverse search that says whether an image is already here.

Every engine answers on one decode, side by side (`Library.search_all`), each with its own list as
long as the original gateway's; `fusion.fuse` merges them by calibrated evidence, and the stored
content digests find the same bytes.
"""

import hashlib
from dataclasses import dataclass, replace

from .fusion import PER_ENGINE, Calibration, FusedHit, Verdict, fuse, shipped_calibration
from .indexes import Hit
from .library import Library


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
    found = library.search_all(data, PER_ENGINE, None if every_engine or not weighed else weighed)
    exact = frozenset(library.store.ids_with_digest(hashlib.sha256(data).digest()))
    near = {"phash": library.engines["phash"].duplicate_threshold} if "phash" in library.engines else {}
    hits = fuse(found, calibration, exact, near)[:k]
    unnamed = [hit.image_id for hit in hits if not hit.evidence]  # exact copies no engine listed
    names = dict(zip(unnamed, library.store.names_for(unnamed)))
    hits = [replace(hit, file_name=names[hit.image_id] or "") if hit.image_id in names else hit for hit in hits]
    return ReverseSearch(hits[0].verdict if hits else Verdict.NONE, hits, found)
