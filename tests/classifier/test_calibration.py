"""Split-conformal thresholds: the right order statistic, the rate bound, the strict rule and bad input."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from eco_guard.classifier import conformal_threshold
from eco_guard.errors import UserError


def test_conformal_threshold_is_the_right_order_statistic() -> None:
    scores = np.random.default_rng(0).uniform(size=999)
    cal = conformal_threshold(scores, 0.1)
    k = math.ceil(1000 * 0.9)
    assert cal.threshold == np.sort(scores)[k - 1]
    assert cal.achievable and cal.n_calibration == 999 and cal.target_fpr == 0.1
    assert "score > threshold" in cal.note


def test_conformal_achieved_fpr_is_bounded() -> None:
    alpha = 0.1
    rng = np.random.default_rng(1)
    fresh = rng.uniform(size=200_000)
    fprs = [float(np.mean(fresh > conformal_threshold(rng.uniform(size=99), alpha).threshold)) for _ in range(200)]
    # The guarantee is marginal (over calibration draws): mean FPR <= alpha, and not far below.
    assert alpha - 0.02 < statistics.mean(fprs) <= alpha + 0.005


def test_conformal_strict_rule_and_integer_boundary() -> None:
    scores = np.arange(99, dtype=float)
    cal = conformal_threshold(scores, 0.01)  # n = 99 = ceil(1/0.01) - 1: just achievable
    assert cal.achievable
    assert cal.threshold == 98.0
    assert not np.any(scores > cal.threshold)


def test_conformal_tiny_n_is_not_achievable() -> None:
    scores = np.array([0.1, 0.5, 0.3])
    cal = conformal_threshold(scores, 0.01)
    assert not cal.achievable
    assert cal.threshold > 0.5
    assert cal.threshold == np.nextafter(0.5, np.inf)
    assert "1/(n+1)" in cal.note and "0.25" in cal.note
    assert not conformal_threshold(np.arange(98, dtype=float), 0.01).achievable


@pytest.mark.parametrize(("scores", "alpha"), [(np.array([0.5]), 0.0), (np.array([0.5]), 1.0), (np.array([]), 0.1)])
def test_conformal_rejects_bad_input(scores: np.ndarray, alpha: float) -> None:
    with pytest.raises(UserError):
        conformal_threshold(scores, alpha)

