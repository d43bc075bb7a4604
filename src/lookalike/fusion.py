"""One ranked list from every engine's answer to an image, and a verdict on each hit.

Each engine's score (a distance, a number of verified matches or of precise ones, a text relevance) is turned into
evidence that the hit is the same source photo as the query: the log of a likelihood ratio, read from
a monotone calibration measured on the copy-detection benchmark (bench/copy_fusion.py) and shipped
in `calibration.json`. An engine that did not list an image gives the evidence of not listing it,
also measured. The evidence adds up (log-odds), so an engine that is blind to a transform and still
returns a full list adds almost nothing, and an image found by one engine alone keeps that evidence.
"""

import json
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Literal

import numpy as np

from .indexes import Hit, Matches, Measure

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
CALIBRATION_VERSION = 2
PER_ENGINE = 200  # each engine's list, as long as the original gateway's; the calibration assumes it
PAIR_ENGINES = ("phash", "global", "color")  # what two stored images are compared on, feature to feature


class Verdict(StrEnum):
    """How a hit relates to the query, strongest first."""

    EXACT = "exact"  # the same bytes
    NEAR_DUPLICATE = "near_duplicate"  # re-encoded, resized, mirrored or turned: the perceptual hashes agree
    COPY = "copy"  # cropped, turned, recoloured, overlaid, bordered: the evidence says same source photo
    SIMILAR = "similar"  # the same scene or subject, another shot
    NONE = "none"


@dataclass(frozen=True)
class EngineCalibration:
    """An engine's score -> log likelihood ratio of "same source photo", monotone between points."""

    scores: list[float]  # ascending, in the engine's measure
    log_ratios: list[float]
    absent: float  # the log likelihood ratio when the engine does not list the image at all
    # How much of its log ratio counts: engines that see the same thing (phash and color both see a
    # re-encode) are not independent, so each one's share is learned rather than assumed to be 1.
    weight: float = 1.0
    # Which of a hit's numbers `scores` are in: its score, or a points engine's precise matches (a
    # copy's matches are precise, another shot's of the same scene mostly are not).
    on: Literal["score", "precise_matches"] = "score"

    def evidence(self, score: float | None) -> float:
        ratio = self.absent if score is None else float(np.interp(score, self.scores, self.log_ratios))
        return self.weight * ratio

    def evidence_of(self, hit: Hit) -> float:
        return self.evidence(getattr(hit, self.on))


@dataclass(frozen=True)
class Calibration:
    engines: dict[str, EngineCalibration]
    copy_at: float  # fused log-odds at or above which a hit is a copy
    # A hit within these engine scores (a distance, or matches) shows the same scene, if not a copy.
    similar_within: dict[str, float] = field(default_factory=dict)
    # copy_at for two stored images judged on PAIR_ENGINES alone (duplicate groups of the library).
    pair_copy_at: float = float("inf")
    # What a points engine's precise matches say on their own (`Matches`): at least this many, a copy
    # whatever the other engines say; a share of its matches under this, another shot of the same
    # scene (a burst, the next frame), which is never a copy however alike it looks to the others.
    precise_copy_at: float = float("inf")
    precise_share: float = 0.0
    made_by: str = ""

    def weighing(self, engines: list[str]) -> list[str]:
        """Those of `engines` whose evidence counts: the others can change no fused score."""
        return [engine for engine in engines if engine in self.engines and self.engines[engine].weight > 0]

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        if data.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"calibration version {data.get('version')}, expected {CALIBRATION_VERSION}")
        engines = {name: EngineCalibration(**fit) for name, fit in data["engines"].items()}
        settings = {key: value for key, value in data.items() if key not in ("version", "engines")}
        return cls(engines, **settings)

    def to_json(self) -> dict:
        settings = {key: value for key, value in vars(self).items() if key != "engines"}
        engines = {name: vars(fit) for name, fit in self.engines.items()}
        return {"version": CALIBRATION_VERSION, **settings, "engines": engines}

    def says_copy(self, evidence: float, copy_at: float, verified: list[Matches]) -> bool:
        """Whether summed `evidence` (against `copy_at`) and what the points engines `verified` make a copy."""
        if any(matches.precise >= self.precise_copy_at for matches in verified):
            return True
        return evidence >= copy_at and not any(self.another_shot(matches) for matches in verified)

    def another_shot(self, matches: Matches) -> bool:
        """Whether a points engine's matches are too few precise for a copy's: the same scene, shot again."""
        return matches.precise < self.precise_share * matches.count


@cache
def shipped_calibration() -> Calibration:
    return Calibration.from_json(json.loads(CALIBRATION_FILE.read_text()))


@dataclass(frozen=True)
class Evidence:
    """What one engine said of a hit: its place in the engine's list, its score, and what that weighs."""

    rank: int  # 1-based
    score: float
    measure: Measure
    weight: float  # what it adds to the fused score: the engine's weighted log likelihood ratio
    precise_matches: int | None = None

    def as_dict(self) -> dict:
        found = {"rank": self.rank, self.measure.value: self.score, "weight": round(self.weight, 4)}
        return found if self.precise_matches is None else found | {"precise_matches": self.precise_matches}


@dataclass(frozen=True)
class FusedHit:
    image_id: int
    file_name: str
    score: float  # summed log-odds of every engine's evidence, listed or not
    verdict: Verdict
    evidence: dict[str, Evidence]

    def as_dict(self) -> dict:
        """What the API and the CLI print."""
        return {
            "image_id": self.image_id,
            "file_name": self.file_name,
            "score": self.score,
            "verdict": self.verdict.value,
            "evidence": {engine: e.as_dict() for engine, e in self.evidence.items()},
        }


def fuse(
    found: dict[str, list[Hit]],
    calibration: Calibration,
    exact: frozenset[int] = frozenset(),
    near_duplicate: dict[str, float] | None = None,
    pending: dict[int, tuple[str, ...]] | None = None,
) -> list[FusedHit]:
    """Every image any engine listed, by summed evidence (the exact copies first).

    `found` holds each engine's list, best first; engines the calibration does not know are shown
    but weigh nothing. `near_duplicate` maps an engine to the score within which it calls two images
    the same (phash's duplicate threshold). `pending` names the engines an image has no feature in
    yet (the background pass owes them): not being listed by those says nothing.
    """
    pending = pending or {}
    listed: dict[int, dict[str, Evidence]] = {}
    names: dict[int, str] = {}
    for engine, hits in found.items():
        fit = calibration.engines.get(engine)
        for rank, hit in enumerate(hits, 1):
            weight = fit.evidence_of(hit) if fit else 0.0
            evidence = Evidence(rank, hit.score, hit.measure, weight, hit.precise_matches)
            listed.setdefault(hit.image_id, {})[engine] = evidence
            names.setdefault(hit.image_id, hit.file_name)
    fused = []
    for image_id in listed.keys() | exact:
        evidence = listed.get(image_id, {})
        score = sum(e.weight for e in evidence.values())
        unknown = pending.get(image_id, ())
        unlisted = [
            calibration.engines[e] for e in found if e in calibration.engines and e not in evidence and e not in unknown
        ]
        score += sum(fit.evidence(None) for fit in unlisted)
        verdict = _verdict(image_id in exact, score, evidence, calibration, near_duplicate or {})
        fused.append(FusedHit(image_id, names.get(image_id, ""), round(score, 4), verdict, evidence))
    return sorted(fused, key=lambda hit: (hit.verdict is not Verdict.EXACT, -hit.score, hit.image_id))


def with_matches(found: dict[str, list[Hit]], engine: str, matches: dict[int, Matches]) -> dict[str, list[Hit]]:
    """`found` with a points engine's list holding `matches` too, where they beat what it listed."""
    listed = {hit.image_id: hit for hit in found.get(engine, [])}
    names = {hit.image_id: hit.file_name for hits in found.values() for hit in hits}
    for image_id, more in matches.items():
        had = listed.get(image_id)
        if had is None or more > Matches(int(had.score), had.precise_matches or 0):
            listed[image_id] = Hit(image_id, more.count, Measure.MATCHES, names.get(image_id, ""), more.precise)
    ranked = sorted(listed.values(), key=lambda hit: (-hit.score, hit.image_id))
    return found | {engine: ranked}


def _verdict(
    exact: bool, score: float, evidence: dict[str, Evidence], calibration: Calibration, near: dict[str, float]
) -> Verdict:
    if exact:
        return Verdict.EXACT
    if any(e in evidence and evidence[e].score <= limit for e, limit in near.items()):
        return Verdict.NEAR_DUPLICATE
    if calibration.says_copy(score, calibration.copy_at, verified(evidence)):
        return Verdict.COPY
    if any(_passes(evidence[e], limit) for e, limit in calibration.similar_within.items() if e in evidence):
        return Verdict.SIMILAR
    return Verdict.NONE


def verified(evidence: dict[str, Evidence]) -> list[Matches]:
    """What the points engines among `evidence` verified, as `Calibration.says_copy` weighs it."""
    return [Matches(int(e.score), e.precise_matches) for e in evidence.values() if e.precise_matches is not None]


def _passes(evidence: Evidence, limit: float) -> bool:
    return evidence.measure.passes(evidence.score, limit)


def reciprocal_rank(found: dict[str, list[Hit]], k: float = 60, weights: dict[str, float] | None = None) -> list[int]:
    """Reciprocal rank fusion (Cormack et al., 2009), weighted per engine if `weights` are given: what
    `fuse` is measured against."""
    scores: dict[int, float] = {}
    for engine, hits in found.items():
        weight = 1.0 if weights is None else weights.get(engine, 0.0)
        for rank, hit in enumerate(hits, 1):
            scores[hit.image_id] = scores.get(hit.image_id, 0.0) + weight / (k + rank)
    return sorted(scores, key=lambda image_id: (-scores[image_id], image_id))
