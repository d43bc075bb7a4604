"""Every pair of binary codes within a Hamming radius, by bit-sampling locality-sensitive hashing.

Two codes within `radius` of each other's `bits` agree on a random bit with probability at least
1 - radius / bits, and on k random bits with that to the power k. Each of `tables` tables buckets the
codes by k sampled bits (a sort: n log n); codes that share a bucket in any table are compared exactly.
k grows with log2 n, so chance collisions stay near n per table, and the tables are as many as it
takes to find a pair at exactly `radius` with probability RECALL (a closer pair, more surely).
"""

import math

import numpy as np

RECALL = 0.999
MAX_RUN = 32  # codes of one bucket each compared with at most this many bucket-mates (a burst of copies)


def pairs_within(codes: np.ndarray, radius: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(pairs, distances): rows (i, j), i < j, of the codes (n, bytes) at most `radius` bits apart."""
    n, width = codes.shape
    bits = width * 8
    if n < 2:
        return np.empty((0, 2), np.int64), np.empty(0, np.int64)
    k = min(bits, max(8, math.ceil(math.log2(n)) + 1))
    agree = (1 - radius / bits) ** k
    tables = 1 if agree >= 1 else max(1, math.ceil(math.log(1 - RECALL) / math.log(1 - agree)))
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(tables):
        key = np.zeros(n, np.uint64)
        for bit in rng.choice(bits, k, replace=False):
            key = (key << np.uint64(1)) | ((codes[:, bit // 8] >> (7 - bit % 8)) & 1).astype(np.uint64)
        order = np.argsort(key, kind="stable")
        ordered = key[order]
        for step in range(1, MAX_RUN + 1):
            same = np.flatnonzero(ordered[step:] == ordered[:-step])
            if not len(same):
                break
            first, second = order[same], order[same + step]
            pairs = np.stack([np.minimum(first, second), np.maximum(first, second)], axis=1)
            distances = hamming(codes[pairs[:, 0]], codes[pairs[:, 1]])
            found.append(np.column_stack([pairs[distances <= radius], distances[distances <= radius]]))
    if not found:
        return np.empty((0, 2), np.int64), np.empty(0, np.int64)
    unique = np.unique(np.concatenate(found), axis=0)
    return unique[:, :2], unique[:, 2]


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits that differ between codes (rows of bytes), row by row."""
    return np.bitwise_count(a ^ b).sum(axis=-1, dtype=np.int64)
