"""The local features engine's index: every stored descriptor, searched by FAISS, voted into images.

A search finds each query descriptor's nearest stored descriptors, maps their point ids to images
(`PointRanges`), counts one vote per query keypoint per image, and hands the best-voted candidates
to the engine's exact verification; the score is the number of verified matches. A keypoint that
many images match about equally well (a stamp, a watermark, a logo that hundreds of photos carry)
splits its vote among them, so a shared overlay cannot crowd the photo's own original out of the
candidates (inter-image burstiness, Jégou et al., 2009). Small libraries use an exact flat index; a
trained OPQ + IVF + PQ index (`train`) keeps searches fast and RAM small past TRAIN_AT_POINTS
descriptors.
"""

import io
import math
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import faiss
import numpy as np

from ..errors import InvalidRequest
from ..features import Keypoints
from ..locks import SharedExclusiveLock
from .base import Hit, IndexSetup, Marker, Matches, Measure, Training
from .files import read_index_file, write_index_file
from .point_ranges import PointRanges

NEIGHBOURS = 8  # stored descriptors fetched per query descriptor
MIN_VOTES = 3  # query keypoints that must hit an image before it is verified
CANDIDATES = 30  # best-voted images verified per query variant
# Stored descriptors within this ratio of a query descriptor's nearest distance match it about as
# well (Lowe's ratio, as the engines verify with): the keypoint's vote is shared among their images.
BURST_RATIO = 0.85
# Flat search costs about 1 s per 400k stored descriptors for a 200-keypoint query on 2 cores.
TRAIN_AT_POINTS = 200_000
RETRAIN_GROWTH = 4  # retrain once the library holds this many times the descriptors trained on
MIN_TRAINING_POINTS = 10_000  # PQ's 256 centroids per sub-vector need a few thousand points at least
OPQ_ITERATIONS = 16
SIZE_SAMPLE = 256  # images whose descriptors are counted to estimate the library's total


class PointIndex:
    measure: ClassVar[Measure] = Measure.MATCHES

    def __init__(self, setup: IndexSetup, index=None, ranges: PointRanges | None = None, trained_points: int = 0):
        self.setup = setup
        self.spec = setup.spec
        # 8-bit codes of the uint8 descriptors: exact, a quarter of float32's RAM, and faster to scan.
        self._index = index or faiss.IndexIDMap(
            faiss.IndexScalarQuantizer(self.spec.dim, faiss.ScalarQuantizer.QT_8bit_direct, faiss.METRIC_L2)
        )
        self.ranges = ranges or PointRanges()
        self.trained_points = trained_points  # descriptors the index was trained on; 0 while flat
        if trained_points:
            faiss.extract_index_ivf(self._index).nprobe = setup.nprobe
        # Searches share the index; adds and removes wait for them and run alone.
        self._lock = SharedExclusiveLock()

    @property
    def ntotal(self) -> int:
        return len(self.ranges)

    @property
    def points(self) -> int:
        return self.ranges.points

    def needs_training(self) -> bool:
        if not self.trained_points:
            return self.points >= TRAIN_AT_POINTS
        return self.points >= RETRAIN_GROWTH * self.trained_points

    def stats(self) -> dict:
        return {"indexed": self.ntotal, "descriptors": self.points, "trained_on": self.trained_points}

    # -- changes ---------------------------------------------------------------------------------

    def add(self, image_ids, features: list[Keypoints]) -> None:
        lengths = np.array([len(f) for f in features], np.int64)
        with self._lock.exclusive():
            starts = self.ranges.allocate(np.asarray(image_ids, np.int64), lengths)
            if lengths.sum():
                points = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
                descriptors = np.concatenate([f.descriptors for f in features]).astype(np.float32)
                self._index.add_with_ids(descriptors, points)

    def remove(self, image_ids) -> None:
        with self._lock.exclusive():
            released = self.ranges.release(image_ids)
            if released:
                points = np.concatenate([np.arange(start, end) for start, end in released])
                self._index.remove_ids(faiss.IDSelectorBatch(points))

    # -- searches --------------------------------------------------------------------------------

    def search(self, queries: list[Keypoints], k: int | None = None, threshold: float | None = None) -> list[Hit]:
        """Images sharing verified matches with any variant, most matches first: those with at least
        `threshold` matches, the best `k` if given."""
        return verified_hits(self.setup, [(variant, self._candidates(variant)) for variant in queries], k, threshold)

    def _candidates(self, query: Keypoints) -> list[int]:
        if len(query) == 0:
            return []
        with self._lock.shared():
            k = min(NEIGHBOURS, self._index.ntotal)  # FAISS's own count: no sum over every image
            if k == 0:
                return []
            squared, points = self._index.search(np.ascontiguousarray(query.descriptors, np.float32), k)
            images = self.ranges.lookup(points)
        return voted_candidates(squared, images)

    # -- building and training -------------------------------------------------------------------

    @classmethod
    def build(cls, setup: IndexSetup) -> "PointIndex":
        """Flat while the library is small, else trained at once: a flat index of that size is slow."""
        estimate = _estimated_points(setup)
        if estimate >= TRAIN_AT_POINTS:
            return cls._trained(setup, estimate)
        index = cls(setup)
        index.add(*setup.source.read())
        return index

    @classmethod
    def train(cls, setup: IndexSetup, training: Training) -> "PointIndex":
        if training.whiten or training.compressed is False:
            raise InvalidRequest(
                f"{setup.name} trains only its compressed index; below {TRAIN_AT_POINTS} descriptors it searches "
                "exactly by itself"
            )
        points = _estimated_points(setup)
        if points < MIN_TRAINING_POINTS:
            raise InvalidRequest(
                f"{setup.name} holds {points} descriptors; training needs {MIN_TRAINING_POINTS} "
                "(below that, exact search is fast)"
            )
        return cls._trained(setup, points)

    @classmethod
    def _trained(cls, setup: IndexSetup, points: int) -> "PointIndex":
        """A trained OPQ + IVF + PQ index holding every stored feature (about `points` descriptors).

        Trained on the descriptors of randomly chosen images, then filled a thousand images at a time,
        so memory holds the sample and one batch, never the whole library's descriptors.
        """
        ids, read = setup.source.ids(), setup.source.read
        nlist = max(16, int(math.sqrt(points)))
        # k-means wants about 40-256 points per list; PQ's 256 centroids a few thousand at least.
        wanted = min(points, max(64 * nlist, 20_000), 1_000_000)
        sample, taken = [], 0
        for chunk in np.array_split(np.random.default_rng(0).permutation(ids), max(1, len(ids) // 500)):
            batch = [f.descriptors for f in read(chunk.tolist())[1]]
            sample += batch
            taken += sum(map(len, batch))
            if taken >= wanted:
                break
        dim = setup.spec.dim
        subquantizers = dim // 4  # 4 dimensions a byte: 32 bytes for 128-d SIFT
        index = faiss.index_factory(dim, f"OPQ{subquantizers},IVF{nlist},PQ{subquantizers}")
        # Polysemous codes only serve Hamming-filtered search, which we do not use; they took most of the
        # training time. OPQ's rotation settles well before FAISS's default 50 iterations.
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
        faiss.downcast_VectorTransform(index.chain.at(0)).niter = OPQ_ITERATIONS
        index.train(np.concatenate(sample)[:wanted].astype(np.float32))
        trained = cls(setup, index, trained_points=points)
        for start in range(0, len(ids), 1000):
            trained.add(*read(ids[start : start + 1000].tolist()))
        return trained

    # -- persistence -----------------------------------------------------------------------------

    def save(self, marker: Marker) -> None:
        header = {"marker": asdict(marker), "trained_points": self.trained_points}
        ranges = io.BytesIO()
        with self._lock.shared():
            np.savez(ranges, **self.ranges.arrays())
            write_index_file(_index_path(self.setup), self.spec, header, self._index, ranges.getvalue())

    @classmethod
    def load(cls, setup: IndexSetup) -> tuple["PointIndex", Marker] | None:
        loaded = read_index_file(_index_path(setup), setup.spec, "float")
        if loaded is None:
            return None
        header, extra, index = loaded
        try:
            ranges = PointRanges.from_arrays(np.load(io.BytesIO(extra)))
        except (OSError, ValueError, KeyError):
            return None
        return cls(setup, index, ranges, header["trained_points"]), Marker(**header["marker"])


def verified_hits(setup: IndexSetup, to_verify: list[tuple[Keypoints, list[int]]], k, threshold) -> list[Hit]:
    """Each (variant, candidates) verified by the engine; each image scored by its best variant."""
    ids, stored = setup.source.read(sorted({i for _, candidates in to_verify for i in candidates}))
    stored_by_id = dict(zip(ids.tolist(), stored))
    best: dict[int, Matches] = {}
    for variant, candidates in to_verify:
        present = [i for i in candidates if i in stored_by_id]  # not deleted since they were voted for
        for image_id, matches in zip(present, setup.verify(variant, [stored_by_id[i] for i in present])):
            best[image_id] = max(best.get(image_id, Matches(0, 0)), matches)
    found = sorted((-m.count, i, m.precise) for i, m in best.items() if m.count > 0 and m.count >= (threshold or 0))
    return [Hit(i, -negative, Measure.MATCHES, precise_matches=precise) for negative, i, precise in found][:k]


def voted_candidates(squared: np.ndarray, images: np.ndarray) -> list[int]:
    """The best-voted images, at least MIN_VOTES each, from each query descriptor's nearest stored
    descriptors: their squared distances and images (-1: none), a row per query descriptor."""
    rows = np.repeat(np.arange(len(squared)), squared.shape[1])
    hit = images.ravel() >= 0
    close = (squared <= squared[:, :1] / BURST_RATIO**2).ravel()[hit]
    # One vote per query keypoint per image, however many of the image's points it hits, shared
    # among the images that match the keypoint about as well as its nearest.
    pairs, pair_of = np.unique(np.stack([rows[hit], images.ravel()[hit]], axis=1), axis=0, return_inverse=True)
    pair_close = np.zeros(len(pairs), bool)
    np.logical_or.at(pair_close, pair_of.ravel(), close)
    sharing = np.maximum(np.bincount(pairs[pair_close, 0], minlength=len(squared)), 1)
    voted, image_of = np.unique(pairs[:, 1], return_inverse=True)
    keypoints = np.bincount(image_of.ravel(), minlength=len(voted))
    votes = np.bincount(image_of.ravel(), weights=1.0 / sharing[pairs[:, 0]], minlength=len(voted))
    order = np.lexsort((voted, -votes))[:CANDIDATES]
    return [int(i) for i, v in zip(voted[order], keypoints[order]) if v >= MIN_VOTES]


def _index_path(setup: IndexSetup) -> Path:
    return setup.file(".faiss")


def _estimated_points(setup: IndexSetup) -> int:
    """The library's descriptors, estimated from a seeded sample of its images (all, when few)."""
    ids = setup.source.ids()
    if len(ids) == 0:
        return 0
    sample = np.sort(np.random.default_rng(0).choice(ids, min(len(ids), SIZE_SAMPLE), replace=False))
    _, features = setup.source.read(sample.tolist())
    return round(np.mean([len(f) for f in features]) * len(ids)) if features else 0
