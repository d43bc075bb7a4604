"""The fusion's calibration, fitted on the copy-detection benchmark's lists (`copy_fusion.py`).

Per engine, the listed hits' scores are cut into quantile bins (of the originals' hit scores and of
the others' separately, merged); a bin's likelihood ratio is (originals / others) x (library size -
1), with half a count added to each; the log ratios are made monotone by isotonic regression
weighted by the bins' counts. Not being listed gets the ratio of the originals' and the others'
rates of not being listed. Each engine's weight: `fit_weights`. copy_at is the smallest fused score
at which the fitting queries' best hits, with the original taken out (`without`), get `copy` or
better at most ABSENT_RATE of the time.
"""

from dataclasses import replace
from functools import cache

import copy_corpus as corpus
import numpy as np
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from lookalike.fusion import PAIR_ENGINES, Calibration, EngineCalibration, fuse, verified
from lookalike.indexes import Hit

BINS = 16  # per class
HARDEST = 20  # other candidates per query the engines' weights are learned against
LOG_RATIO_LIMITS = (-8.0, 12.0)
ABSENT_RATE = 0.005
# The similar tier: a global-features cosine distance within this shows the same scene (see docs).
SIMILAR_GLOBAL = 0.25
# The share of the originals' local hits that may have fewer precise matches than `precise_share`.
PRECISE_SHARE_MISSED = 0.02
SAME_SOURCE = ("mvtb/mosaic/aerial",)  # originals cut from one photo, by name
SAME_AS_SOURCE = {"mvtb/butterfly.jpg": "butterfly"}  # originals that are a distractor source photo


def without(found: dict[str, list[Hit]], original: int, searched_without: dict | None = None) -> dict[str, list[Hit]]:
    """The lists as a library without the original would give them: without it, and without the other
    originals cut from the same photo (`same_source`). `searched_without`: lists searched without them
    (the local engine's: its candidates, and what it sets aside as a shared pattern, change), in
    place of those in `found`."""
    gone = same_source(original)
    lists = found | (searched_without or {})
    return {name: [hit for hit in hits if hit.image_id not in gone] for name, hits in lists.items()}


@cache
def same_source(original: int) -> frozenset[int]:
    """The original and the stored images that share its pixels (checked by the local engine's precise
    matches, all of theirs precise): the aerial mosaic tiles are cut from one photo (aerialphoto), so a
    library holding one tile holds part of the next; OpenCV's butterfly sample, a distractor source, is
    the Machine Vision Toolbox's butterfly, so the distractors cut from it are crops of that original."""
    names = corpus.originals()[0]
    family = next((prefix for prefix in SAME_SOURCE if names[original].startswith(prefix)), None)
    found = {original} if family is None else {i for i, name in enumerate(names) if name.startswith(family)}
    if names[original] in SAME_AS_SOURCE:
        found |= {len(names) + index for index in corpus.distractors_from(SAME_AS_SOURCE[names[original]])}
    return frozenset(found)


def fit_engine(lists: list[list[Hit]], truths: list[int], stored: int, on: str = "score") -> EngineCalibration:
    scores, labels = [], []
    for hits, truth in zip(lists, truths):
        scores += [getattr(hit, on) for hit in hits]
        labels += [hit.image_id == truth for hit in hits]
    scores, labels = np.array(scores, np.float64), np.array(labels, bool)
    higher_is_better = next((hits[0].measure.higher_is_better for hits in lists if hits), False)
    queries = len(lists)
    others = queries * (stored - 1)
    listed_originals = int(labels.sum())
    absent = np.log((queries - listed_originals + 0.5) / queries) - np.log((others - (~labels).sum()) / others)
    if listed_originals == 0:
        return EngineCalibration([0.0], [float(absent)], float(absent), on=on)
    edges = np.unique(
        np.concatenate(
            [
                np.quantile(scores[labels], np.linspace(0, 1, BINS + 1)),
                np.quantile(scores[~labels], np.linspace(0, 1, BINS + 1)),
            ]
        )
    )
    bins = np.clip(np.searchsorted(edges, scores, side="right") - 1, 0, len(edges) - 2)
    centres, ratios, weights = [], [], []
    for b in np.unique(bins):
        inside = bins == b
        positive, negative = labels[inside].sum(), (~labels[inside]).sum()
        centres.append(float(np.median(scores[inside])))
        ratios.append(np.log((positive + 0.5) / (negative + 0.5)) + np.log(stored - 1))
        weights.append(inside.sum())
    monotone = IsotonicRegression(increasing=higher_is_better).fit(centres, ratios, sample_weight=weights)
    log_ratios = np.clip(monotone.predict(centres), *LOG_RATIO_LIMITS)
    return EngineCalibration(
        [round(c, 6) for c in centres], [round(float(r), 4) for r in log_ratios], round(float(absent), 4), on=on
    )


def evidence_matrix(lists: dict[str, list[Hit]], engines: dict[str, EngineCalibration]):
    """(candidate ids, their unweighted log ratios, one column per engine)."""
    ids = sorted({hit.image_id for hits in lists.values() for hit in hits})
    row = {image_id: r for r, image_id in enumerate(ids)}
    matrix = np.tile([fit.absent for fit in engines.values()], (len(ids), 1))
    for column, (name, fit) in enumerate(engines.items()):
        for hit in lists.get(name, []):
            matrix[row[hit.image_id], column] = np.interp(getattr(hit, fit.on), fit.scores, fit.log_ratios)
    return ids, matrix


def fit_weights(
    found: list[dict], truths: list[int], engines: dict[str, EngineCalibration], bounded: bool = True
) -> np.ndarray:
    """Each engine's weight: a logistic regression on the differences between the original's log ratios
    and those of the HARDEST other candidates of each query (pairwise ranking, no intercept), L2 as
    scikit-learn's C=1. `bounded`: each weight within [0, 1], so that no engine's calibrated evidence
    counts more than once (a weight under 1 is an engine that sees what others see); unbounded, an
    engine that ranks the originals first almost always (global) is weighted far above 1, and another
    shot of the same scene, as close to it as a copy, looks like a copy."""
    differences = []
    for lists, truth in zip(found, truths):
        ids, matrix = evidence_matrix(lists, engines)
        if truth not in ids:
            continue
        original = matrix[ids.index(truth)]
        others = np.delete(matrix, ids.index(truth), axis=0)
        hardest = others[np.argsort(-others.sum(axis=1))[:HARDEST]]
        differences.append(original - hardest)
    x = np.concatenate(differences)
    x = np.concatenate([x, -x])
    y = np.r_[np.ones(len(x) // 2), np.zeros(len(x) // 2)]
    if not bounded:
        return np.clip(LogisticRegression(fit_intercept=False, C=1.0, max_iter=1000).fit(x, y).coef_[0], 0.0, None)
    signs = 2 * y - 1

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        margins = signs * (x @ w)
        return np.logaddexp(0, -margins).sum() + 0.5 * w @ w, -(x.T @ (signs * expit(-margins))) + w

    bounds = [(0.0, 1.0)] * x.shape[1]
    return minimize(loss, np.full(x.shape[1], 0.5), jac=True, method="L-BFGS-B", bounds=bounds).x


def fit(
    found: list[dict],
    truths: list[int],
    absent: list[dict],
    stored: int,
    near: dict,
    on: dict[str, str],
    bounded: bool = True,
) -> Calibration:
    """`absent`: each query's lists without its original (`without`); `on`: the engines calibrated on
    another number of their hits than the score (`EngineCalibration.on`); `bounded`: weights within
    [0, 1] (`fit_weights`)."""
    engines = {name: fit_engine([f[name] for f in found], truths, stored, on.get(name, "score")) for name in found[0]}
    weights = fit_weights(found, truths, engines, bounded)
    engines = {name: replace(fit, weight=round(float(w), 4)) for (name, fit), w in zip(engines.items(), weights)}
    precise = {}
    if "local" in on:  # the rules on the precise matches alone (Calibration.says_copy)
        shares = [h.precise_matches / h.score for f, t in zip(found, truths) for h in f["local"] if h.image_id == t]
        precise["precise_share"] = round(float(np.quantile(shares, PRECISE_SHARE_MISSED)), 4)
        best_precise = [max((h.precise_matches for h in lists["local"]), default=0) for lists in absent]
        precise["precise_copy_at"] = _above(best_precise, ABSENT_RATE / 2)
    partial = Calibration(engines, float("inf"), **precise)
    copy_at = _copy_at([fuse(lists, partial, near_duplicate=near) for lists in absent], partial)
    # Duplicate groups judge two stored images on PAIR_ENGINES alone: their own threshold, made the same way.
    pairwise = replace(partial, engines={name: fit for name, fit in engines.items() if name in PAIR_ENGINES})
    pair_lists = [{e: hits for e, hits in lists.items() if e in PAIR_ENGINES} for lists in absent]
    pair_copy_at = _copy_at([fuse(lists, pairwise) for lists in pair_lists], pairwise)
    return replace(partial, copy_at=copy_at, similar_within={"global": SIMILAR_GLOBAL}, pair_copy_at=pair_copy_at)


def _copy_at(absent: list[list], calibration: Calibration) -> float:
    """The smallest fused score at which no more than ABSENT_RATE of the absent queries' best hits are
    copies, with the rules on precise matches as `calibration` has them."""
    scores = []
    for hits in absent:
        found = verified(hits[0].evidence) if hits else []
        if hits and calibration.says_copy(-np.inf, 0.0, found):
            scores.append(np.inf)  # a copy by its precise matches alone, whatever the threshold
        elif not hits or not calibration.says_copy(np.inf, 0.0, found):
            scores.append(-np.inf)  # nothing found, or another shot by its precise matches: never a copy
        else:
            scores.append(hits[0].score)
    return _above(scores, ABSENT_RATE)


def _above(best_absent: list[float], rate: float) -> float:
    """The smallest score that no more than `rate` of the absent queries' best reach."""
    ordered = sorted(best_absent)
    allowed = int(np.floor(rate * len(ordered)))  # reaching it: the `allowed` largest at most
    value = ordered[len(ordered) - allowed - 1] if allowed < len(ordered) else ordered[0]
    return round(float(value) + 1e-3, 4) if np.isfinite(value) else float(value)
