"""Groups of duplicates across the whole library, tier by tier, from the stored features alone.

Candidate pairs come from searches over the stored features: every pair of perceptual hashes within
phash's threshold, mirror images included (locality-sensitive hashing, about n log n), and each
global embedding's nearest among all embeddings. Each pair gets the strongest tier its evidence
supports, as `fusion` defines them:

    exact           the same bytes (the stored digests)
    near_duplicate  hashes within phash's threshold (mirror images too)
    copy            the calibrated evidence of phash, global and color says the same source photo,
                    and the local engine does not see another shot (few precise matches)
    similar         global features within the calibration's similar distance: another shot

A group holds only images whose every pair is within the group's tier (complete linkage), so a chain
of look-alikes never links two photos that are not alike themselves, and a burst of similar shots is
a `similar` group, never a duplicate one.
"""

import threading
from dataclasses import dataclass

import numpy as np

from .engines.phash import BLOCK
from .errors import InvalidRequest
from .fusion import Calibration, Verdict, shipped_calibration
from .indexes import Matches
from .indexes.hamming_pairs import hamming, pairs_within
from .library import Library

TIERS = [Verdict.EXACT, Verdict.NEAR_DUPLICATE, Verdict.COPY, Verdict.SIMILAR]
NEIGHBOURS = 32  # each embedding's nearest that may pair with it: a larger group may split
# Mirroring an image negates its DCT coefficients of odd horizontal frequency: flipping their bits
# gives the mirror image's hash to within ~10 bits (22 at most over the test photos).
_MIRROR = np.packbits(np.tile(np.arange(BLOCK) % 2 == 1, BLOCK))


@dataclass(frozen=True)
class Pair:
    first: int
    second: int
    tier: Verdict
    scores: dict[str, float]  # each engine's distance between the two
    evidence: float  # summed log-odds of "same source photo"
    precise_matches: int | None = None  # the local engine's, where it checked the pair

    def as_dict(self) -> dict:
        found = {"images": [self.first, self.second], "tier": self.tier.value, "distances": self.scores}
        found |= {"evidence": self.evidence}
        return found if self.precise_matches is None else found | {"precise_matches": self.precise_matches}


@dataclass(frozen=True)
class Group:
    tier: Verdict  # the weakest of its pairs'
    image_ids: list[int]
    file_names: list[str]
    pairs: list[Pair]

    def as_dict(self) -> dict:
        """What the API and the CLI print."""
        return {
            "tier": self.tier.value,
            "images": [{"image_id": i, "file_name": n} for i, n in zip(self.image_ids, self.file_names)],
            "pairs": [pair.as_dict() for pair in self.pairs],
        }


class GroupsOfTheLibrary:
    """`duplicate_groups` of each tier, made again only once the library has changed (a journal of one
    of its engines has moved): a page of 10,000 groups after another costs no new search."""

    def __init__(self, library: Library):
        self.library = library
        self._made: dict[Verdict, tuple[tuple[int, ...], list[Group]]] = {}
        self._lock = threading.Lock()

    def groups(self, down_to: Verdict) -> list[Group]:
        version = tuple(self.library.store.journal_seq(name) for name in self.library.engines)
        with self._lock:  # one request makes them; the others wait for its answer
            made = self._made.get(down_to)
            if made is None or made[0] != version:
                made = self._made[down_to] = (version, duplicate_groups(self.library, down_to))
            return made[1]


def duplicate_groups(
    library: Library,
    down_to: Verdict = Verdict.NEAR_DUPLICATE,
    phash_threshold: float | None = None,
    calibration: Calibration | None = None,
) -> list[Group]:
    """Every group whose pairs are all `down_to` or stronger, largest first."""
    if down_to not in TIERS:
        raise ValueError(f"tier must be one of {', '.join(TIERS)}")
    if "phash" not in library.engines:
        raise InvalidRequest("duplicate groups need the phash engine")
    calibration = calibration or shipped_calibration()
    limit = TIERS.index(down_to)
    features = _Features(library)
    threshold = library.engines["phash"].duplicate_threshold if phash_threshold is None else phash_threshold
    candidates = features.hash_neighbours(threshold)
    if limit >= TIERS.index(Verdict.COPY):
        candidates |= features.embedding_neighbours(calibration.similar_within.get("global", 0.0))
    same_bytes = [pair for group in library.store.same_contents() for pair in _all_pairs(sorted(group))]
    exact = {pair for pair in same_bytes if set(pair) <= features.row.keys()}
    pairs = {}
    for first, second in candidates | exact:
        pair = features.pair(first, second, (first, second) in exact, threshold, calibration)
        if TIERS.index(pair.tier) <= limit:
            pairs[first, second] = pair
    groups = _complete_linkage(pairs)
    grouped = sorted({image_id for group in groups for image_id in group})
    name_of = dict(zip(grouped, library.store.names_for(grouped)))
    found = []
    for members in groups:
        inside = [pairs[p] for p in _all_pairs(members)]
        tier = max((pair.tier for pair in inside), key=TIERS.index)
        found.append(Group(tier, members, [name_of[i] or "" for i in members], inside))
    return sorted(found, key=lambda g: (TIERS.index(g.tier), -len(g.image_ids), g.image_ids[0]))


class _Features:
    """The stored features that pairs are judged on, by row, with their ids."""

    def __init__(self, library: Library):
        self.ids, self.hashes = library.store.read_features("phash")
        self.row = {image_id: row for row, image_id in enumerate(self.ids.tolist())}
        self.embeddings = self.colors = None
        self.local, self.store = library.engines.get("local"), library.store
        if "global" in library.engines:
            self.embeddings = self._aligned(library, "global")
            self.global_index = library.indexes["global"]
        if "color" in library.engines:
            self.colors = self._aligned(library, "color")

    def _aligned(self, library: Library, engine: str) -> np.ndarray | None:
        ids, vectors = library.store.read_features(engine, self.ids.tolist())
        return vectors if np.array_equal(ids, self.ids) else None

    def hash_neighbours(self, threshold: float) -> set[tuple[int, int]]:
        """(first id, second id) pairs within `threshold`, mirror images included: the hashes and their
        mirror images' hashes searched together by locality-sensitive hashing (about n log n)."""
        count = len(self.ids)
        pairs, _ = pairs_within(np.concatenate([self.hashes, self.hashes ^ _MIRROR]), int(threshold))
        first, second = pairs[:, 0] % count, pairs[:, 1] % count
        apart = first != second
        first, second = self.ids[np.minimum(first, second)[apart]], self.ids[np.maximum(first, second)[apart]]
        return set(zip(first.tolist(), second.tolist()))

    def embedding_neighbours(self, within: float) -> set[tuple[int, int]]:
        if self.embeddings is None or within <= 0:
            return set()
        found = set()
        for start in range(0, len(self.ids), 1024):
            distances, ids = self.global_index.neighbours(self.embeddings[start : start + 1024], NEIGHBOURS + 1)
            for query, column in zip(*np.nonzero((distances <= within) & (ids >= 0))):
                first, second = int(self.ids[start + query]), int(ids[query, column])
                if first != second and second in self.row:
                    found.add((min(first, second), max(first, second)))
        return found

    def pair(self, first: int, second: int, exact: bool, threshold: float, calibration: Calibration) -> Pair:
        a, b = self.row[first], self.row[second]
        hashes = self.hashes[a], self.hashes[b]
        scores = {"phash": float(min(hamming(*hashes), hamming(hashes[0] ^ _MIRROR, hashes[1])))}
        if self.embeddings is not None:
            scores["global"] = float(max(0.0, 1.0 - self.embeddings[a] @ self.embeddings[b]))
        if self.colors is not None:
            scores["color"] = float(np.abs(self.colors[a] - self.colors[b]).sum())
        evidence = sum(calibration.engines[e].evidence(s) for e, s in scores.items() if e in calibration.engines)
        matches = None
        # A pair the evidence calls a copy is checked by the local engine: another shot of the scene
        # (a burst, the next frame) has few precise matches and is no copy (`Calibration.says_copy`).
        # Its matches add no evidence here: photos that share an overlay (a phone's status bar on
        # screenshots, a stamp) match precisely on it, which a query's candidates show and a pair cannot.
        if (
            not exact
            and scores["phash"] > threshold
            and self.local is not None
            and evidence >= calibration.pair_copy_at
        ):
            matches = self._matches(first, second)
        if exact:
            tier = Verdict.EXACT
        elif scores["phash"] <= threshold:
            tier = Verdict.NEAR_DUPLICATE
        elif calibration.says_copy(evidence, calibration.pair_copy_at, [matches] if matches and matches.count else []):
            tier = Verdict.COPY
        elif scores.get("global", np.inf) <= calibration.similar_within.get("global", -1.0):
            tier = Verdict.SIMILAR
        else:
            tier = Verdict.NONE
        distances = {e: round(s, 4) for e, s in scores.items()}
        precise = None if matches is None else matches.precise
        return Pair(first, second, tier, distances, round(float(evidence), 3), precise)

    def _matches(self, first: int, second: int) -> Matches:
        """The local engine's verified matches between two stored images: precise for a crop or a copy
        of the same photo, mostly not for another shot of the same scene."""
        keypoints = [self.store.feature(self.local.name, image_id) for image_id in (first, second)]
        return Matches(0, 0) if None in keypoints else self.local.verify(*keypoints)


def _all_pairs(members: list[int]):
    return [(a, b) for i, a in enumerate(members) for b in members[i + 1 :]]


def _complete_linkage(pairs: dict[tuple[int, int], Pair]) -> list[list[int]]:
    """Groups built strongest pair first, two groups merging only where every pair across is known."""
    group_of: dict[int, list[int]] = {}
    order = sorted(pairs.values(), key=lambda p: (TIERS.index(p.tier), -p.evidence, p.first, p.second))
    for pair in order:
        left = group_of.get(pair.first, [pair.first])
        right = group_of.get(pair.second, [pair.second])
        if left is right:
            continue
        if all((min(a, b), max(a, b)) in pairs for a in left for b in right):
            merged = sorted(left + right)
            for image_id in merged:
                group_of[image_id] = merged
    unique = {id(group): group for group in group_of.values()}
    return list(unique.values())
