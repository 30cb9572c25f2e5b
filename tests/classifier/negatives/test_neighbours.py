"""The policy's own examples as calibration negatives, scored cross-fitted; overlapping targets."""

from __future__ import annotations

import re

import numpy as np
import pytest
from scipy import sparse

from eco_guard.classifier import Classifier, Encoder, TargetData, TargetFit
from eco_guard.classifier import heads
from eco_guard.classifier.negatives import neighbours
from eco_guard.classifier.negatives.swaps import SWAPS_PER_TARGET

from tests.classifier.texts import FRANCE, FRANCE_RETAIN, HELD_OUT_POSITIVES, PYTHON, PYTHON_RETAIN, TARGET_FPR


def test_other_targets_examples_calibrate_with_the_retain_examples(fitted: tuple[Classifier, list[TargetFit]]) -> None:
    # No calibration set: the retain examples (12, less any the background also holds), Python's
    # name-swapped copies and the 16 forget examples form one pooled near-neighbour source.
    found = re.search(r"cross-fitted retain and name-swapped copies and other targets' examples: n=(\d+),", fitted[1][0].calibration.note)
    assert found and 16 + SWAPS_PER_TARGET < int(found.group(1)) <= 28 + SWAPS_PER_TARGET


def test_cross_target_scores_come_from_the_other_heads_fitted_without_them() -> None:
    rng = np.random.default_rng(0)
    texts = [f"text {i}" for i in range(60)]
    row_of = {s: i for i, s in enumerate(texts)}
    emb = rng.normal(size=(60, 8)).astype(np.float32)
    lex = sparse.csr_matrix((60, 0))
    feats = heads.features(emb, lex)
    targets = [TargetData(f"t{a}", texts[5 * a : 5 * a + 5], texts[15 + 5 * a : 20 + 5 * a]) for a in range(3)]
    plans = [heads.plan_target(t, targets, texts[30:]) for t in targets]
    got = neighbours.cross_target_scores(targets, plans, feats, row_of, emb, lex)
    # Two groups: {t0, t2} then {t1}; every head is re-fitted without the group's forget
    # texts (keeping its own).
    for members in ([0, 2], [1]):
        refits = []
        for j, plan in enumerate(plans):
            left_out = {s for i in members if i != j for s in targets[i].forget}
            keep = [k for k, s in enumerate(plan.train_texts) if s not in left_out]
            refits.append(heads.fit_head(feats[[row_of[plan.train_texts[k]] for k in keep]], plan.train_labels[keep]))
        for a in members:
            rows = [row_of[s] for s in targets[a].forget]
            expected = np.stack([heads.head_scores(emb[rows], lex[rows], w[None, :], np.array([b]))[:, 0] for w, b in refits], 1)
            np.testing.assert_allclose(got[a], expected, rtol=1e-9)
    # A text's own head, and the heads of targets overlapping its own, never count.
    pooled = neighbours.neighbour_scores(got, frozenset({(0, 2), (2, 0)}))
    np.testing.assert_array_equal(pooled[:5], got[0][:, 1])
    np.testing.assert_array_equal(pooled[5:10], np.maximum(got[1][:, 0], got[1][:, 2]))
    np.testing.assert_array_equal(pooled[10:], got[2][:, 1])
    # With every pair overlapping, no text is anyone's neighbour.
    assert neighbours.neighbour_scores(got, frozenset({(a, b) for a in range(3) for b in range(3) if a != b})).size == 0
    # A head that could not be re-fitted without them (NaN) never counts; a text left with no head is dropped.
    unfitted = [m.copy() for m in got]
    unfitted[0][:, 1] = np.nan
    np.testing.assert_array_equal(neighbours.neighbour_scores(unfitted, frozenset({(0, 2), (2, 0)})), pooled[5:])


@pytest.mark.fits
def test_one_topic_split_into_two_targets_is_reported_as_overlapping(encoder: Encoder) -> None:
    sentence = encoder.encode(FRANCE + PYTHON)
    row_of = {s: i for i, s in enumerate(FRANCE + PYTHON)}
    split = [TargetData("france-a", FRANCE[::2], []), TargetData("france-b", FRANCE[1::2], []), TargetData("python", PYTHON, [])]
    assert neighbours.overlapping_targets(split, sentence, row_of) == frozenset({(0, 1), (1, 0)})
    # One example has no within-target similarity to compare with: never judged overlapping.
    single = [TargetData("one", FRANCE[:1], []), TargetData("rest", FRANCE[1:], [])]
    assert neighbours.overlapping_targets(single, sentence, row_of) == frozenset()
    assert neighbours.overlapping_targets(single[::-1], sentence, row_of) == frozenset()
    # Through fit: the pair is named, and its heads still catch new questions on the topic.
    clf, fits = Classifier.fit(
        encoder,
        [TargetData("france-a", FRANCE[::2], FRANCE_RETAIN), TargetData("france-b", FRANCE[1::2], []), TargetData("python-lang", PYTHON, PYTHON_RETAIN)],
        target_fpr=TARGET_FPR,
        progress=False,
    )
    assert "consider merging them): 'france-a' and 'france-b'" in fits[0].calibration.note
    france_questions = [t for target, t in HELD_OUT_POSITIVES if target == "france"]
    verdicts = clf.decide(clf.score(france_questions))
    assert all(v.flagged and v.target_id in ("france-a", "france-b") for v in verdicts)

