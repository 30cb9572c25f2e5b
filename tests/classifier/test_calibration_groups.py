"""Calibration groups: the policy's or found, merged until each can certify, and the per-group halves cross-fitting uses."""

from __future__ import annotations

import numpy as np

from eco_guard.classifier.calibration import joint_threshold
from eco_guard.classifier.calibration_groups import (
    UNGROUPED,
    Groups,
    group_report,
    calibration_groups,
    fit_groups,
    GROUP_FOLDS,
    grouped_folds,
    grouped_sources,
    min_group_size,
)
from eco_guard.classifier.heads import TargetData


def _blobs(sizes: list[int], seed: int = 0) -> np.ndarray:
    """Unit vectors in well-separated clusters of the given sizes."""
    rng = np.random.default_rng(seed)
    centres = np.eye(16)[: len(sizes)] * 5
    rows = [centres[k] + rng.normal(size=(n, 16)) * 0.3 for k, n in enumerate(sizes)]
    return np.concatenate(rows)


def test_min_group_size_lets_each_half_certify() -> None:
    assert min_group_size(0.01) == 198
    assert min_group_size(0.1) == 18


def test_policy_groups_small_ones_merge_with_their_nearest() -> None:
    emb = _blobs([30, 30, 40])  # three groups, the first two are given as separate subjects of one cluster
    emb[30:60] = emb[:30] + 0.01  # "genetics" sits right next to "biology"
    texts = [f"t{i}" for i in range(100)]
    given = {t: ("biology" if i < 30 else "genetics" if i < 60 else "history") for i, t in enumerate(texts)}
    groups = calibration_groups(texts, given, emb, 0.05, seed=0)  # groups need 38 members
    assert groups is not None and not groups.found
    assert sorted(groups.names()) == ["biology + genetics", "history"]


def test_found_groups_follow_the_clusters_and_are_named() -> None:
    emb = _blobs([60, 60])
    texts = [f"cell protein {i}" for i in range(60)] + [f"war treaty {i}" for i in range(60)]
    groups = calibration_groups(texts, {}, emb, 0.1, seed=0)
    assert groups is not None and groups.found
    first, second = {groups.of[t] for t in texts[:60]}, {groups.of[t] for t in texts[60:]}
    assert not first & second  # no group mixes the two topics
    assert all("cell" in name for name in first) and all("war" in name for name in second)


def test_too_few_negatives_give_no_groups() -> None:
    assert calibration_groups([f"t{i}" for i in range(30)], {}, _blobs([30]), 0.1, seed=0) is None
    targets = [TargetData("a", ["x"], [f"r{i}" for i in range(20)], tuple("g" for _ in range(20)))]
    assert fit_groups(targets, [], lambda ts: _blobs([len(ts)]), 0.1, seed=0) is None


def test_fit_groups_reads_the_retain_groups_and_skips_forget_texts() -> None:
    retain = [f"r{i}" for i in range(80)] + ["x"]
    targets = [TargetData("a", ["x"], retain, tuple("bio" if i < 40 else "law" for i in range(80)) + ("law",))]
    groups = fit_groups(targets, [], lambda ts: _blobs([40, len(ts) - 40]), 0.1, seed=0)
    assert groups is not None and "x" not in groups.of
    assert groups.of["r0"] == "bio" and groups.of["r79"] == "law"


def test_grouped_folds_slice_each_group() -> None:
    retain = ["a1", "a2", "a3", "a4", "b1", "b2"]
    assert grouped_folds(retain, None) == [["a1", "a2", "a3"], ["a4", "b1", "b2"]]
    group_of = {f"g{i}": "g" for i in range(10)} | {f"h{i}": "h" for i in range(5)}
    folds = grouped_folds([*group_of], group_of)
    assert len(folds) == GROUP_FOLDS == 5
    assert folds[0] == ["g0", "g1", "h0"] and folds[4] == ["g8", "g9", "h4"]  # contiguous slices of each group
    assert sorted(t for f in folds for t in f) == sorted(group_of)


def test_only_the_policy_groups_the_pooled_threshold_fails_calibrate_on_their_own() -> None:
    """The point of it: a neighbourhood flagged far above target at the pooled threshold gets its own threshold."""
    rng = np.random.default_rng(0)
    texts = [f"t{i}" for i in range(1400)]
    scores = rng.uniform(0, 0.5, size=1400)
    scores[:200] = rng.uniform(0.3, 0.9, size=200)  # the neighbouring subject scores high
    given = {t: "near" if i < 200 else "far" if i < 400 else UNGROUPED for i, t in enumerate(texts)}
    groups = calibration_groups(texts, given, np.eye(1400, 8), 0.01, seed=0)
    assert groups is not None
    pooled = joint_threshold({"retain": scores}, 0.01, 1)
    sources = grouped_sources("retain", texts, scores, groups, 0.01)
    assert set(sources) == {"retain", "retain: near"}  # "far" is held by the pooled threshold
    grouped = joint_threshold(sources, 0.01, 1)
    assert np.mean(scores[:200] > pooled.threshold) > 0.05
    assert np.mean(scores[:200] > grouped.threshold) <= 0.01
    note, over = group_report("retain", texts, scores, groups, grouped.threshold, 0.01, list(sources))
    assert "near n=200" in note and "(calibrated on its own)" in note and not over
    # Found groups are only reported: the same scores leave the threshold pooled, and the fit is told which group fails.
    found = Groups(groups.of, found=True)
    assert set(grouped_sources("retain", texts, scores, found, 0.01)) == {"retain"}
    note, over = group_report("retain", texts, scores, found, pooled.threshold, 0.01, ["retain"])
    assert list(over) == ["retain: near"] and over["retain: near"] > 0.05 and "reported, not calibrated apart" in note
