"""Groups of near-duplicates across the whole library, from the perceptual hash's range searches."""

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .indexes import Hit, Measure
from .library import Library


def duplicate_groups(library: Library, engine: str = "phash", threshold: float | None = None) -> list[list[Hit]]:
    """Every group of images linked by Hamming distances within `threshold`, largest group first.

    Each member's distance is to the group's first member (its lowest id), as stored.
    """
    threshold = library.engine(engine).duplicate_threshold if threshold is None else threshold
    ids, features = library.store.read_features(engine)  # ids ascending: LMDB keys are big-endian
    sources, targets = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
    for queries, found, _ in library.indexes[engine].pairs_within(ids, features, threshold):
        sources.append(queries)
        targets.append(found)
    rows = np.searchsorted(ids, np.concatenate(sources)), np.searchsorted(ids, np.concatenate(targets))
    graph = coo_matrix((np.ones(len(rows[0]), np.int8), rows), shape=(len(ids), len(ids)))
    _, labels = connected_components(graph, directed=False)
    groups = []
    for label in np.flatnonzero(np.bincount(labels) > 1):
        members = np.flatnonzero(labels == label)
        distances = np.unpackbits(features[members[0]] ^ features[members], axis=1).sum(axis=1)
        names = library.store.names_for(ids[members].tolist())
        groups.append(
            [Hit(int(ids[m]), float(d), Measure.DISTANCE, n or "") for m, d, n in zip(members, distances, names)]
        )
    return sorted(groups, key=lambda group: (-len(group), group[0].image_id))
