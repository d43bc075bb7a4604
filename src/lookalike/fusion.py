"""One ranked list from every engine's answer to an image, and a verdict on each hit.

Each engine's score (a distance, a number of verified matches, a text relevance) is turned into
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

import numpy as np

from .indexes import Hit, Measure

CALIBRATION_FILE = Path(__file__).with_name("calibration.json")
CALIBRATION_VERSION = 1
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

    def evidence(self, score: float | None) -> float:
        ratio = self.absent if score is None else float(np.interp(score, self.scores, self.log_ratios))
        return self.weight * ratio


@dataclass(frozen=True)
class Calibration:
    engines: dict[str, EngineCalibration]
    copy_at: float  # fused log-odds at or above which a hit is a copy
    # A hit within these engine scores (a distance, or matches) shows the same scene, if not a copy.
    similar_within: dict[str, float] = field(default_factory=dict)
    # copy_at for two stored images judged on PAIR_ENGINES alone (duplicate groups of the library).
    pair_copy_at: float = float("inf")
    made_by: str = ""

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        if data.get("version") != CALIBRATION_VERSION:
            raise ValueError(f"calibration version {data.get('version')}, expected {CALIBRATION_VERSION}")
        engines = {name: EngineCalibration(**fit) for name, fit in data["engines"].items()}
        return cls(
            engines, data["copy_at"], data.get("similar_within", {}), data["pair_copy_at"], data.get("made_by", "")
        )

    def to_json(self) -> dict:
        engines = {name: vars(fit) for name, fit in self.engines.items()}
        return {
            "version": CALIBRATION_VERSION,
            "made_by": self.made_by,
            "copy_at": self.copy_at,
            "pair_copy_at": self.pair_copy_at,
            "similar_within": self.similar_within,
            "engines": engines,
        }


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

    def as_dict(self) -> dict:
        return {"rank": self.rank, self.measure.value: self.score, "weight": round(self.weight, 4)}


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
) -> list[FusedHit]:
    """Every image any engine listed, by summed evidence (the exact copies first).

    `found` holds each engine's list, best first; engines the calibration does not know are shown
    but weigh nothing. `near_duplicate` maps an engine to the score within which it calls two images
    the same (phash's duplicate threshold).
    """
    listed: dict[int, dict[str, Evidence]] = {}
    names: dict[int, str] = {}
    for engine, hits in found.items():
        fit = calibration.engines.get(engine)
        for rank, hit in enumerate(hits, 1):
            weight = fit.evidence(hit.score) if fit else 0.0
            listed.setdefault(hit.image_id, {})[engine] = Evidence(rank, hit.score, hit.measure, weight)
            names.setdefault(hit.image_id, hit.file_name)
    fused = []
    for image_id in listed.keys() | exact:
        evidence = listed.get(image_id, {})
        score = sum(e.weight for e in evidence.values())
        unlisted = [calibration.engines[e] for e in found if e in calibration.engines and e not in evidence]
        score += sum(fit.evidence(None) for fit in unlisted)
        verdict = _verdict(image_id in exact, score, evidence, calibration, near_duplicate or {})
        fused.append(FusedHit(image_id, names.get(image_id, ""), round(score, 4), verdict, evidence))
    return sorted(fused, key=lambda hit: (hit.verdict is not Verdict.EXACT, -hit.score, hit.image_id))


def _verdict(
    exact: bool, score: float, evidence: dict[str, Evidence], calibration: Calibration, near: dict[str, float]
) -> Verdict:
    if exact:
        return Verdict.EXACT
    if any(e in evidence and evidence[e].score <= limit for e, limit in near.items()):
        return Verdict.NEAR_DUPLICATE
    if score >= calibration.copy_at:
        return Verdict.COPY
    if any(_passes(evidence[e], limit) for e, limit in calibration.similar_within.items() if e in evidence):
        return Verdict.SIMILAR
    return Verdict.NONE


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
