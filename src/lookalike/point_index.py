"""The local features engine's index: every stored descriptor, searched by FAISS, voted into images.

A search finds each query descriptor's nearest stored descriptors, maps their point ids to images
(`PointRanges`), counts one vote per query keypoint per image, and hands the best-voted candidates
to the engine's exact verification. Small libraries use an exact flat index; a trained
OPQ + IVF + PQ index (`train`) keeps searches fast and RAM small past TRAIN_AT_POINTS descriptors.
"""

import io
import logging
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import faiss
import numpy as np

from .engines import FeatureSpec, Keypoints
from .index import Marker, Neighbour, read_index_file, write_index_file
from .locks import SharedExclusiveLock
from .point_ranges import PointRanges

log = logging.getLogger(__name__)

NEIGHBOURS = 8  # stored descriptors fetched per query descriptor
MIN_VOTES = 3  # query keypoints that must hit an image before it is verified
CANDIDATES = 30  # best-voted images verified per query variant
# Flat search costs about 1 s per 400k stored descriptors for a 200-keypoint query on 2 cores.
TRAIN_AT_POINTS = 200_000
RETRAIN_GROWTH = 4  # retrain once the library holds this many times the descriptors trained on
DEFAULT_NPROBE = 16
OPQ_ITERATIONS = 16

Verify = Callable[[Keypoints, Keypoints], int]
Fetch = Callable[[list[int]], tuple[np.ndarray, list[Keypoints]]]


class PointIndex:
    def __init__(self, spec: FeatureSpec, verify: Verify, fetch: Fetch, index=None, ranges=None, trained_points=0):
        self.spec = spec
        self._verify = verify
        self._fetch = fetch
        # 8-bit codes of the uint8 descriptors: exact, a quarter of float32's RAM, and faster to scan.
        self._index = index or faiss.IndexIDMap(
            faiss.IndexScalarQuantizer(spec.dim, faiss.ScalarQuantizer.QT_8bit_direct, faiss.METRIC_L2)
        )
        self.ranges = ranges or PointRanges()
        self.trained_points = trained_points  # descriptors the index was trained on; 0 while flat
        # Searches share the index; adds and removes wait for them and run alone.
        self._lock = SharedExclusiveLock()

    @property
    def ntotal(self) -> int:
        return len(self.ranges)

    @property
    def points(self) -> int:
        return self.ranges.points

    def set_nprobe(self, nprobe: int) -> None:
        if self.trained_points:
            faiss.extract_index_ivf(self._index).nprobe = nprobe

    def needs_training(self) -> bool:
        if not self.trained_points:
            return self.points >= TRAIN_AT_POINTS
        return self.points >= RETRAIN_GROWTH * self.trained_points

    # -- changes ---------------------------------------------------------------------------------

    def add(self, ids, features: list[Keypoints]) -> None:
        lengths = np.array([len(f) for f in features], np.int64)
        with self._lock.exclusive():
            starts = self.ranges.allocate(np.asarray(ids, np.int64), lengths)
            if lengths.sum():
                points = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths)])
                descriptors = np.concatenate([f.descriptors for f in features]).astype(np.float32)
                self._index.add_with_ids(descriptors, points)

    def remove(self, ids) -> None:
        with self._lock.exclusive():
            released = self.ranges.release(ids)
            if released:
                points = np.concatenate([np.arange(start, end) for start, end in released])
                self._index.remove_ids(faiss.IDSelectorBatch(points))

    # -- searches --------------------------------------------------------------------------------

    def search(self, variants: list[Keypoints], k: int | None = None, min_matches: float = 0) -> list[Neighbour]:
        """Images sharing verified matches with any variant, most matches first; the best `k` if given."""
        to_verify = [(variant, image_id) for variant in variants for image_id in self._candidates(variant)]
        ids, stored = self._fetch(sorted({image_id for _, image_id in to_verify}))
        stored_by_id = dict(zip(ids.tolist(), stored))
        best: dict[int, int] = {}
        for variant, image_id in to_verify:
            if image_id in stored_by_id:  # deleted since it was voted for
                matches = self._verify(variant, stored_by_id[image_id])
                best[image_id] = max(best.get(image_id, 0), matches)
        found = sorted((-m, i) for i, m in best.items() if m > 0 and m >= min_matches)
        return [Neighbour(image_id, matches=-negative) for negative, image_id in found][:k]

    def _candidates(self, query: Keypoints) -> list[int]:
        """The best-voted images for one query's descriptors, at least MIN_VOTES each."""
        if len(query) == 0:
            return []
        with self._lock.shared():
            k = min(NEIGHBOURS, self._index.ntotal)  # FAISS's own count: no sum over every image
            if k == 0:
                return []
            _, points = self._index.search(np.ascontiguousarray(query.descriptors, np.float32), k)
            images = self.ranges.lookup(points)
        rows = np.repeat(np.arange(len(query)), k)
        hit = images.ravel() >= 0
        # One vote per query keypoint per image, however many of the image's points it hits.
        pairs = np.unique(np.stack([rows[hit], images.ravel()[hit]], axis=1), axis=0)
        voted, votes = np.unique(pairs[:, 1], return_counts=True)
        order = np.lexsort((voted, -votes))[:CANDIDATES]
        return [int(i) for i, v in zip(voted[order], votes[order]) if v >= MIN_VOTES]

    # -- training --------------------------------------------------------------------------------

    @classmethod
    def train_from(cls, spec: FeatureSpec, verify: Verify, fetch: Fetch, ids: np.ndarray, points: int):
        """A trained OPQ + IVF + PQ index holding the features of `ids` (about `points` descriptors).

        Trained on the descriptors of randomly chosen images, then filled a thousand images at a time,
        so memory holds the sample and one batch, never the whole library's descriptors.
        """
        nlist = max(16, int(math.sqrt(points)))
        # k-means wants about 40-256 points per list; PQ's 256 centroids a few thousand at least.
        wanted = min(points, max(64 * nlist, 20_000), 1_000_000)
        sample, taken = [], 0
        for chunk in np.array_split(np.random.default_rng(0).permutation(ids), max(1, len(ids) // 500)):
            batch = [f.descriptors for f in fetch(chunk.tolist())[1]]
            sample += batch
            taken += sum(map(len, batch))
            if taken >= wanted:
                break
        subquantizers = spec.dim // 4  # 4 dimensions a byte: 32 bytes for 128-d SIFT
        index = faiss.index_factory(spec.dim, f"OPQ{subquantizers},IVF{nlist},PQ{subquantizers}")
        # Polysemous codes only serve Hamming-filtered search, which we do not use; they took most of the
        # training time. OPQ's rotation settles well before FAISS's default 50 iterations.
        faiss.downcast_index(faiss.extract_index_ivf(index)).do_polysemous_training = False
        faiss.downcast_VectorTransform(index.chain.at(0)).niter = OPQ_ITERATIONS
        index.train(np.concatenate(sample)[:wanted].astype(np.float32))
        trained = cls(spec, verify, fetch, index, trained_points=points)
        for start in range(0, len(ids), 1000):
            trained.add(*fetch(ids[start : start + 1000].tolist()))
        return trained

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: Path, marker: Marker) -> None:
        header = {"marker": asdict(marker), "spec": asdict(self.spec), "trained_points": self.trained_points}
        ranges = io.BytesIO()
        with self._lock.shared():
            np.savez(ranges, **self.ranges.arrays())
            write_index_file(path, header, self._index, ranges.getvalue())

    @classmethod
    def load(cls, path: Path, spec: FeatureSpec, verify: Verify, fetch: Fetch):
        loaded = read_index_file(path, spec)
        if loaded is None:
            return None
        header, extra, index = loaded
        try:
            ranges = PointRanges.from_arrays(np.load(io.BytesIO(extra)))
        except (OSError, ValueError, KeyError):
            return None
        return cls(spec, verify, fetch, index, ranges, header["trained_points"]), Marker(**header["marker"])
