"""Split-conformal thresholds: the part that turns a score into a stated false-positive rate.

Decision rule everywhere in eco-guard: ``flagged = score > threshold`` (strict). With n
held-out negative scores and threshold = their k-th smallest value,
k = ceil((n + 1)(1 - alpha)), a new negative that is exchangeable with the held-out ones
exceeds the threshold with probability at most (n + 1 - k) / (n + 1) <= alpha. The bound
needs no assumption on the score distribution and stays valid with ties, because ties at
the threshold are not flagged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from eco_guard.errors import UserError

# (n + 1)(1 - alpha) is often an integer in exact arithmetic (n = 99, alpha = 0.01) but lands
# a hair above it in floating point; without this slack ceil() would demand one more sample.
_CEIL_SLACK = 1e-9


@dataclass(frozen=True)
class Calibration:
    """How a threshold was chosen, kept so reports and audit records can say what it guarantees."""

    threshold: float
    target_fpr: float
    n_calibration: int
    achievable: bool
    """False when n_calibration < ceil(1/target_fpr) - 1: too few negatives to certify target_fpr."""
    note: str
    estimated_fpr: tuple[tuple[str, float], ...] = ()
    """Per source of held-out negatives, the 2-fold cross-calibrated flag rate (see :func:`_two_fold_fpr`):
    the note states them too, this is for code (``fit`` never calls a target certified above target_fpr)."""


def conformal_threshold(negative_scores: np.ndarray, target_fpr: float) -> Calibration:
    """Choose the threshold whose false-positive rate on new negatives is <= ``target_fpr``.

    When there are too few negatives for that guarantee we do not pretend: the threshold
    goes just above the largest calibration score (so none of them would be flagged),
    ``achievable`` is False, and the note states the smallest rate the data supports.
    """
    if not 0.0 < target_fpr < 1.0:
        raise UserError(f"target_fpr must be strictly between 0 and 1, got {target_fpr}")
    scores = np.asarray(negative_scores, dtype=np.float64)
    if scores.ndim != 1 or scores.size == 0:
        raise UserError(f"need a non-empty 1-D array of calibration scores, got shape {scores.shape}")
    if not np.all(np.isfinite(scores)):
        raise UserError("calibration scores contain NaN or infinity")
    n = int(scores.size)
    k = math.ceil((n + 1) * (1.0 - target_fpr) - _CEIL_SLACK)
    needed = math.ceil(1.0 / target_fpr - _CEIL_SLACK) - 1
    if k <= n:
        threshold = float(np.sort(scores)[k - 1])
        note = (
            f"split conformal: threshold is the {k}-th smallest of {n} held-out negative scores "
            f"(k = ceil((n+1)(1-alpha))); flag when score > threshold; a new exchangeable negative "
            f"is flagged with probability <= {target_fpr:g}"
        )
        return Calibration(threshold, target_fpr, n, True, note)
    threshold = float(np.nextafter(scores.max(), np.inf))
    note = (
        f"not achievable: {n} held-out negatives cannot certify a false-positive rate of {target_fpr:g} "
        f"(that needs at least {needed}); threshold set just above the largest calibration score, "
        f"and the smallest false-positive rate this data can support is 1/(n+1) = {1.0 / (n + 1):.4g}; "
        f"add more negative examples (retain or background prompts) to reach the target"
    )
    return Calibration(threshold, target_fpr, n, False, note)


def joint_threshold(
    max_scores: dict[str, np.ndarray], target_fpr: float, n_targets: int, *, estimate: bool = True
) -> Calibration:
    """The largest of the per-source conformal thresholds, with a note naming each source.

    A source too small to certify ``target_fpr`` on its own (a few held-out retain
    examples) is not dropped: all sources are then also pooled, and the pooled threshold
    competes too, so those near neighbours still count, with the guarantee stated for
    the mixture.
    """
    per_source = {name: conformal_threshold(scores, target_fpr) for name, scores in max_scores.items()}
    candidates = {name: c for name, c in per_source.items() if c.achievable}
    if len(candidates) < len(per_source):
        candidates["all sources pooled"] = conformal_threshold(np.concatenate(list(max_scores.values())), target_fpr)
    name, best = max(candidates.items(), key=lambda item: item[1].threshold)
    parts = [
        f"{n}: n={c.n_calibration}, threshold {c.threshold:.4f}" + ("" if c.achievable else " (too few to certify alone)")
        for n, c in {**per_source, **candidates}.items()
    ]
    note = (
        f"one threshold shared by all {n_targets} target(s), calibrated on the max score over targets; "
        f"split conformal per source of held-out negatives ({'; '.join(parts)}); the largest ({name}) is used"
    )
    if not best.achievable:
        note += f". {best.note}"
    estimated = _two_fold_fpr(max_scores, target_fpr, n_targets) if estimate else {}
    if estimated:
        rates = ", ".join(f"{n} {r:.4f}" for n, r in estimated.items())
        note += f". Estimated false-positive rate on unseen negatives (2-fold cross-calibration): {rates}"
    return Calibration(
        threshold=best.threshold,
        target_fpr=target_fpr,
        n_calibration=sum(c.n_calibration for c in per_source.values()),
        achievable=best.achievable,
        note=note,
        estimated_fpr=tuple(estimated.items()),
    )


def _two_fold_fpr(max_scores: dict[str, np.ndarray], target_fpr: float, n_targets: int) -> dict[str, float]:
    """Flag rate of each source at a threshold calibrated without those rows.

    The rate on the calibration rows themselves is <= target_fpr by construction, so it
    says nothing; calibrating on alternate halves and measuring on the other half gives
    an honest estimate of what new traffic like each source will see.
    """
    flagged = {name: 0 for name in max_scores}
    for fold in (0, 1):
        fitted = {n: v[fold::2] for n, v in max_scores.items() if v[fold::2].size}
        threshold = joint_threshold(fitted, target_fpr, n_targets, estimate=False).threshold
        for name, scores in max_scores.items():
            flagged[name] += int(np.sum(scores[1 - fold :: 2] > threshold))
    return {name: flagged[name] / max(v.size, 1) for name, v in max_scores.items()}
