"""Local features: finds the original of a crop, through keypoints spread over the image.

An image becomes about 200 keypoints (DoG detector) with descriptors. The point index votes for
images that share descriptors with the query; `verify` then re-matches each candidate exactly and
counts the matches a homography explains (MAGSAC++), which is the score, and of them those that one
similarity transform (a crop, turn, scale or border) puts within a pixel of their match: a copy's
keypoints are found again on the same pixels, so almost all of them are precise, while another shot
of the same scene (a burst, the next video frame, a chessboard seen from elsewhere) fits a
homography only loosely, through parallax and perspective, and keeps few.
"""

import cv2
import numpy as np
from PIL import Image, ImageOps
from pydantic import Field

from ..features import FeatureSpec, Keypoints, Matches
from .base import Engine, EngineOptions
from .describers import DescriberName, create_describer
from .framing import framed_photo

# Long side of the frame keypoints are found in. Larger finds smaller crops but costs time per image.
WORKING_SIDE = 1024
TOTAL_KEYPOINTS = 200
PER_QUADRANT = 50
# A keypoint is skipped when a kept one within this radius (a fraction of the long side: 50 px of
# 3000) already has this many kept neighbours.
NEIGHBOUR_RADIUS = 50 / 3000
MAX_NEIGHBOURS = 3
# Lower than OpenCV's 0.04, so low-contrast photos still offer enough candidates to spread.
CONTRAST_THRESHOLD = 0.02
RATIO = 0.85  # Lowe's ratio test, on the nearest and second-nearest stored descriptor
MAGSAC_THRESHOLD = 6.0  # pixels, in the working frame
MIN_MATCHES = 8  # fewer inliers than this are what a homography fits to chance
# Pixels, in the coarser of the two frames, within which a copy's matches land under one similarity
# transform: 98% of copies' homography inliers do, 22% of other shots' (docs/benchmarks.md).
PRECISE = 1.0
# A query keypoint verified in this many candidates is on a pattern many photos share (a watermark, a
# stamp, a logo), and so is every keypoint in the box around such keypoints (widened by this fraction
# of the frame): matches there say nothing of which photo the query shows.
SHARED_IN_IMAGES = 3
SHARED_MARGIN = 0.02
# A shared pattern whose box covers at most this share of the query's keypoints' extent is an
# overlay on the photo (a stamp, a caption bar): where nothing verifies off it, nothing does. A larger
# one is what the query shows (a logo alone, a scene shot again), and its matches stand.
OVERLAY_AT_MOST = 0.5


class LocalOptions(EngineOptions):
    descriptor: DescriberName = Field("rootsift", validation_alias="local_descriptor")


class LocalFeatures(Engine):
    name = "local"
    slow = True
    Options = LocalOptions
    decode_side = WORKING_SIDE * 3 // 4

    def __init__(self, options: LocalOptions | None = None):
        super().__init__(options)
        self.describer = create_describer(self.options.descriptor, self.options.models_dir)
        self.spec = FeatureSpec("points", self.describer.dim, "l2", model=self.options.descriptor)
        self._detector = cv2.SIFT_create(contrastThreshold=CONTRAST_THRESHOLD)

    def extract(self, image: Image.Image) -> Keypoints:
        """Keypoints of the photo, within its frame where one surrounds it (`framing`): a border has
        none, and a phone's bars only those of their words, the same on every screenshot; and the
        photo, small on a phone's screen, gets the working frame to itself."""
        framed = framed_photo(image)
        grey = working_frame(image if framed is None else framed)
        keypoints = spread(self._detector.detect(grey, None), grey.shape)
        descriptors = self.describer.describe(grey, keypoints)
        return Keypoints(np.array([kp.pt for kp in keypoints], np.float32).reshape(-1, 2), descriptors)

    def query_variants(self, image: Image.Image, mirrored: bool = False) -> list[Keypoints]:
        """The image's keypoints, and with `mirrored` those of its mirror image: found afresh, not flipped."""
        return [self.extract(image)] + ([self.extract(ImageOps.mirror(image))] if mirrored else [])

    def verify(self, query: Keypoints, stored: Keypoints) -> Matches:
        """Matches between the two that one homography explains (0 below MIN_MATCHES), and how many of
        them are precise."""
        inliers, precise = self._inliers(query, stored)
        return Matches(len(inliers), int(precise.sum()))

    def verify_all(self, query: Keypoints, candidates: list[Keypoints]) -> list[Matches]:
        """Each candidate's matches off the pattern that SHARED_IN_IMAGES candidates show, so a stamp on
        hundreds of photos does not verify each as a copy, even when the photo under the stamp is not
        stored; all its matches where the pattern is most of the query (a logo alone) and nothing
        else matches anywhere."""
        verified = [self._inliers(query, stored) for stored in candidates]
        everything = [Matches(len(rows), int(precise.sum())) for rows, precise in verified]
        rows, images = np.unique(np.concatenate([np.empty(0, np.int64), *(r for r, _ in verified)]), return_counts=True)
        shared = rows[images >= SHARED_IN_IMAGES]
        if not len(shared):
            return everything
        margin = SHARED_MARGIN * query.xy.max()
        low, high = query.xy[shared].min(axis=0) - margin, query.xy[shared].max(axis=0) + margin
        on_pattern = np.all((query.xy >= low) & (query.xy <= high), axis=1)
        off = [Matches(int((~on_pattern[r]).sum()), int((precise & ~on_pattern[r]).sum())) for r, precise in verified]
        if not any(matches.count >= MIN_MATCHES for matches in off) and not _an_overlay(query.xy, low, high):
            return everything
        return [matches if matches.count >= MIN_MATCHES else Matches(0, 0) for matches in off]

    def _inliers(self, query: Keypoints, stored: Keypoints) -> tuple[np.ndarray, np.ndarray]:
        """The query's keypoint rows whose matches one homography explains (none below MIN_MATCHES), and
        which of them one similarity transform puts within PRECISE pixels."""
        none = np.empty(0, np.int64), np.empty(0, bool)
        pairs = mutual_matches(query.descriptors, stored.descriptors)
        if len(pairs) < MIN_MATCHES:
            return none
        query_xy, stored_xy = query.xy[pairs[:, 0]], stored.xy[pairs[:, 1]]
        homography, inliers = cv2.findHomography(query_xy, stored_xy, cv2.USAC_MAGSAC, MAGSAC_THRESHOLD, maxIters=2000)
        if homography is None or inliers.sum() < MIN_MATCHES:
            return none
        found = inliers.ravel().astype(bool)
        tolerance = PRECISE * max(1.0, _scale(homography))
        return pairs[found, 0], _within_similarity(query_xy[found], stored_xy[found], tolerance)


def _an_overlay(xy: np.ndarray, low: np.ndarray, high: np.ndarray) -> bool:
    """Whether the box from `low` to `high` covers at most OVERLAY_AT_MOST of the keypoints' extent."""
    start, end = xy.min(axis=0), xy.max(axis=0)
    covered = np.clip(np.minimum(high, end) - np.maximum(low, start), 0, None)
    return float(np.prod(covered)) <= OVERLAY_AT_MOST * float(np.prod(np.maximum(end - start, 1)))


def _scale(homography: np.ndarray) -> float:
    """How many stored pixels one query pixel spans (at the origin): residuals in the stored frame
    divided by it are in the query's."""
    return float(np.sqrt(abs(np.linalg.det(homography[:2, :2] / homography[2, 2]))))


def _within_similarity(query_xy: np.ndarray, stored_xy: np.ndarray, tolerance: float) -> np.ndarray:
    """Which of the matches the least-median similarity transform between them maps within `tolerance`."""
    similarity, _ = cv2.estimateAffinePartial2D(query_xy, stored_xy, method=cv2.LMEDS)
    if similarity is None:
        return np.zeros(len(query_xy), bool)
    moved = query_xy @ similarity[:, :2].T + similarity[:, 2]
    return np.linalg.norm(moved - stored_xy, axis=1) <= tolerance


def working_frame(image: Image.Image) -> np.ndarray:
    """Grey, with the long side at most WORKING_SIDE."""
    grey = image.convert("L")
    if max(grey.size) > WORKING_SIDE:
        scale = WORKING_SIDE / max(grey.size)
        grey = grey.resize((max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.LANCZOS)
    return np.asarray(grey)


def spread(candidates, shape: tuple[int, int]) -> list[cv2.KeyPoint]:
    """Strongest keypoints first, at most PER_QUADRANT per quadrant, none in an already crowded spot."""
    height, width = shape
    radius = NEIGHBOUR_RADIUS * max(shape)
    order = sorted(candidates, key=lambda kp: -kp.response)
    kept: list[cv2.KeyPoint] = []
    xy = np.empty((TOTAL_KEYPOINTS, 2), np.float32)
    neighbours = np.zeros(TOTAL_KEYPOINTS, np.int32)
    per_quadrant = [0, 0, 0, 0]
    for kp in order:
        x, y = kp.pt
        quadrant = (x >= width / 2) + 2 * (y >= height / 2)
        if per_quadrant[quadrant] >= PER_QUADRANT:
            continue
        n = len(kept)
        near = np.flatnonzero(((xy[:n] - kp.pt) ** 2).sum(axis=1) <= radius**2)
        if (neighbours[near] >= MAX_NEIGHBOURS).any():
            continue
        neighbours[near] += 1
        neighbours[n] = len(near)
        xy[n] = kp.pt
        kept.append(kp)
        per_quadrant[quadrant] += 1
        if len(kept) == TOTAL_KEYPOINTS:
            break
    return kept


def mutual_matches(query: np.ndarray, stored: np.ndarray) -> np.ndarray:
    """(query row, stored row) pairs that are each other's nearest and pass the ratio test."""
    if len(query) < 2 or len(stored) < 2:
        return np.empty((0, 2), np.int64)
    q, s = query.astype(np.float32), stored.astype(np.float32)
    # OpenCV's brute-force matcher: as fast as a BLAS product when idle, far faster on a busy server.
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    best_query_of_stored = np.array([m.trainIdx for m in matcher.match(s, q)])
    pairs = [
        (first.queryIdx, first.trainIdx)
        for first, second in matcher.knnMatch(q, s, k=2)
        if first.distance < RATIO * second.distance and best_query_of_stored[first.trainIdx] == first.queryIdx
    ]
    return np.array(pairs, np.int64).reshape(-1, 2)
