"""Point id -> image id, for every descriptor the point index returns.

Each image's descriptors get consecutive point ids, so the map is one sorted array of range starts
with the owning image and the range length: a lookup is a vectorised binary search (numpy
searchsorted), 20 bytes of RAM per image, no per-point storage.
"""

import numpy as np


class PointRanges:
    def __init__(self, starts=None, lengths=None, image_ids=None, next_point: int = 0):
        self.starts = np.asarray(starts if starts is not None else [], np.int64)
        self.lengths = np.asarray(lengths if lengths is not None else [], np.int32)
        self.image_ids = np.asarray(image_ids if image_ids is not None else [], np.int64)
        # Point ids are never reused, so a deleted image's stale points can never resolve to a new image.
        self.next_point = next_point

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def points(self) -> int:
        return int(self.lengths.sum())

    def allocate(self, image_ids: np.ndarray, lengths: np.ndarray) -> np.ndarray:
        """Give each image the next free range of its length; returns the range starts."""
        lengths = np.asarray(lengths, np.int64)
        starts = self.next_point + np.cumsum(lengths) - lengths
        self.starts = np.concatenate([self.starts, starts])
        self.lengths = np.concatenate([self.lengths, lengths.astype(np.int32)])
        self.image_ids = np.concatenate([self.image_ids, np.asarray(image_ids, np.int64)])
        self.next_point += int(lengths.sum())
        return starts

    def release(self, image_ids) -> list[tuple[int, int]]:
        """Forget these images' ranges; returns them as (start, end) for removal from the index."""
        gone = np.isin(self.image_ids, np.asarray(list(image_ids), np.int64))
        released = [(int(s), int(s) + int(n)) for s, n in zip(self.starts[gone], self.lengths[gone])]
        keep = ~gone
        self.starts, self.lengths, self.image_ids = self.starts[keep], self.lengths[keep], self.image_ids[keep]
        return released

    def lookup(self, points: np.ndarray) -> np.ndarray:
        """The image id owning each point id; -1 for ids that are negative or no longer owned."""
        points = np.asarray(points, np.int64)
        if not len(self):
            return np.full(points.shape, -1, np.int64)
        slot = np.searchsorted(self.starts, points, side="right") - 1
        clipped = np.maximum(slot, 0)
        owned = (slot >= 0) & (points < self.starts[clipped] + self.lengths[clipped])
        return np.where(owned, self.image_ids[clipped], -1)

    def range_of(self, image_id: int) -> tuple[int, int] | None:
        found = np.flatnonzero(self.image_ids == image_id)
        if not len(found):
            return None
        start = int(self.starts[found[0]])
        return start, start + int(self.lengths[found[0]])

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "starts": self.starts,
            "lengths": self.lengths,
            "image_ids": self.image_ids,
            "next_point": np.array([self.next_point], np.int64),
        }

    @classmethod
    def from_arrays(cls, arrays) -> "PointRanges":
        return cls(arrays["starts"], arrays["lengths"], arrays["image_ids"], int(arrays["next_point"][0]))
