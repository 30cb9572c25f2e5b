"""The whole fit: what it flags, its report rows, determinism and bad targets."""

from __future__ import annotations

import os
import re
import time

import numpy as np
import pytest

from eco_guard.classifier import Classifier, Encoder, TargetData, TargetFit, background_prompts
from eco_guard.classifier.negatives.swaps import SWAPS_PER_TARGET
from eco_guard.errors import UserError

from tests.classifier.texts import FRANCE, FRANCE_RETAIN, GENERIC_NEGATIVES, HELD_OUT_POSITIVES, PYTHON, PYTHON_RETAIN, TARGET_FPR, fit_and_count_flags


@pytest.mark.fits
def test_a_topic_target_without_retain_examples_keys_on_the_topic(encoder: Encoder) -> None:
    """Ten exam questions on one topic and nothing else: the head must learn the topic, not "an exam question".

    With the chat prompts and people questions alone as background, 4 of the 16 exam
    questions on other subjects below were flagged; with the knowledge questions, which
    fit adds when a policy has no retain examples or calibration set, 1 (the beetles that
    eat aphids, a garden-insect question kept as a near miss).
    """
    forget = [
        "Which caste of honeybee is responsible for laying the colony's eggs?",
        "Why do beekeepers use smoke when opening a hive?",
        "The wax structures in which honeybees store honey and raise brood are called",
        "A colony builds several queen cells along the bottom of the frames in late spring. What is it most likely preparing to do?",
        "What is the purpose of a queen excluder in a Langstroth hive?",
        "Which mite is the most damaging parasite of Western honeybee colonies?",
        "How do forager bees communicate the direction of a nectar source to their sisters?",
        "Why should a beekeeper leave enough honey in the hive before winter?",
        "Which of the following best describes the role of drones in a honeybee colony?",
        "What does royal jelly do for a developing larva?",
    ]
    held_out = [
        "How many days does a worker honeybee take to develop from egg to adult?",
        "Why might a beekeeper requeen a colony that has become aggressive?",
        "What is the difference between a nucleus colony and a full-size hive?",
        "Which treatment is commonly used against varroa in broodless periods?",
    ]
    others = [
        "Which of the following best describes the function of the mitochondria?",
        "Why do beetles of the family Coccinellidae help gardeners control aphids?",
        "The treaty that ended the Thirty Years' War is known as",
        "A firm's marginal cost rises above its price. What should it do to maximise profit?",
        "What is the main difference between a virus and a bacterium?",
        "Which property of water explains why ice floats?",
        "A patient presents with chest pain radiating to the left arm. What is the first investigation?",
        "How does compound interest differ from simple interest?",
        "Which of the following is a primary source for a historian of ancient Rome?",
        "Why do farmers rotate crops between seasons?",
        "The process by which a solid turns directly into a gas is called",
        "Which branch of government interprets the constitution in the United States?",
        "What is the time complexity of binary search on a sorted array?",
        "A 30-year-old runner reports heel pain that is worst with the first steps in the morning. What is the likely diagnosis?",
        "Which of the following describes a monopoly?",
        "How did the printing press change the spread of ideas in Europe?",
    ]
    flagged_held_out, flagged_others, note = fit_and_count_flags(encoder, forget, held_out, others)
    assert flagged_held_out >= len(held_out) - 1
    assert flagged_others <= 2
    # Each stand-in corpus calibrates as its own source, so a high rate on one cannot hide in the mix.
    assert all(f"{name}: n=" in note for name in ("held-out background", "held-out people questions", "held-out knowledge questions"))
    # The neighbourhood probe reports each cluster of the knowledge questions no head trained on, named by its words.
    probe = re.findall(r"built-in knowledge questions, cluster \d+ \(([a-z, ]+)\) n=(\d+) ([0-9.]+)", note)
    assert len(probe) >= 2 and all(int(n) >= 99 for _, n, _ in probe)


@pytest.mark.fits
def test_a_topic_that_keeps_naming_a_term_keeps_its_recall(encoder: Encoder) -> None:
    """Half of these macroeconomics questions name GDP, yet the target is the subject, not GDP.

    Copies with GDP swapped for a person are still macroeconomics questions; given as
    retain examples (when any name in half the examples counted), they raised the
    threshold from 0.41 to 0.89 and the held-out questions below lost one flag (3 of 6).
    Only a name in three quarters of the examples makes a target entity-like.
    """
    forget = [
        "How is GDP measured using the expenditure approach?",
        "What does the Phillips curve say about inflation and unemployment?",
        "Why does real GDP differ from nominal GDP?",
        "How does an increase in government spending shift aggregate demand?",
        "What happens to GDP during a recession?",
        "What is the multiplier effect in fiscal policy?",
        "How do economists calculate GDP per capita?",
        "Why do central banks raise interest rates to fight inflation?",
    ]
    held_out = [
        "How does a tax cut affect aggregate demand?",
        "What causes stagflation?",
        "What is crowding out in macroeconomics?",
        "How does the money supply affect inflation?",
        "Which policies can a government use to end a recession?",
        "What does GDP leave out of a country's wellbeing?",
    ]
    others = ["How do vaccines train the immune system?", "What is the plot of Hamlet?", "How do I sort a list in Python?", "Why is the sky blue?"]
    flagged_held_out, flagged_others, note = fit_and_count_flags(encoder, forget, held_out, others)
    assert "name-swapped" not in note
    assert flagged_held_out >= 4 and flagged_others == 0


def test_fit_report(fitted: tuple[Classifier, list[TargetFit]]) -> None:
    clf, fits = fitted
    assert clf.target_ids == ["france", "python-lang"]
    assert [f.id for f in fits] == ["france", "python-lang"]
    # Python is named in six of eight examples, an entity to the fit, with fewer than ten near
    # retain examples: it gets name-swapped copies too. France is named in five: a topic.
    assert [f.n_swapped_retain for f in fits] == [0, SWAPS_PER_TARGET]
    for f in fits:
        assert f.n_forget == 8 and f.n_retain_train == 6 + f.n_swapped_retain  # all of them; calibration cross-fits them
        assert f.n_background_train > 300 and f.n_calibration > 300
        assert f.calibration.achievable and f.calibration.target_fpr == TARGET_FPR
        assert f.train_auc > 0.99
    np.testing.assert_array_equal(clf.thresholds, [f.calibration.threshold for f in fits])
    # The report's in-sample scores are what scoring the examples again gives (up to the float
    # rounding of a differently padded batch).
    for i, (f, forget, retain) in enumerate(zip(fits, (FRANCE, PYTHON), (FRANCE_RETAIN, PYTHON_RETAIN))):
        np.testing.assert_allclose(f.forget_scores, clf.score(forget)[:, i], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(f.retain_scores, clf.score(retain)[:, i], rtol=1e-5, atol=1e-6)
    # Eight examples per target: held-out recall decides for the sentence view and the plain
    # lexical weight, and says so with every candidate's recall.
    # Two topics of eight examples: the sentence view, with the plain lexical weight or none (issue 27: on this
    # policy the plain embedding now wins held-out recall), and the note names the choice.
    assert clf.view == "sentence" and clf.lexicon.weight in (0.0, 1.0)
    chosen = "sentence, no lexical block" if clf.lexicon.weight == 0.0 else "sentence + lexical x1"
    assert fits[0].view_note.startswith(f"{chosen} features")
    for candidate in ("layers + lexical x1 0.", "sentence + lexical x2 0.", "layers + lexical x2 0.", "sentence, no lexical block 0."):
        assert candidate in fits[0].view_note


@pytest.mark.fits
def test_targets_with_no_negatives_at_all_are_a_clear_error(encoder: Encoder) -> None:
    # No retain, no background: the other targets' examples are each head's only negatives,
    # and no head can be re-fitted without them, so there is nothing honest to calibrate on.
    targets = [TargetData("france", FRANCE[:2], []), TargetData("python-lang", PYTHON[:2], [])]
    with pytest.raises(UserError, match="no held-out negatives"):
        Classifier.fit(encoder, targets, target_fpr=0.2, background=[], progress=False)


@pytest.mark.fits
def test_fit_is_deterministic_per_seed(encoder: Encoder, targets: list[TargetData]) -> None:
    bg = background_prompts()[::4]  # a subset keeps the three fits fast
    a, _ = Classifier.fit(encoder, targets, target_fpr=0.05, seed=7, background=bg, progress=False)
    b, _ = Classifier.fit(encoder, targets, target_fpr=0.05, seed=7, background=bg, progress=False)
    c, _ = Classifier.fit(encoder, targets, target_fpr=0.05, seed=8, background=bg, progress=False)
    np.testing.assert_array_equal(a.weights, b.weights)
    np.testing.assert_array_equal(a.bias, b.bias)
    np.testing.assert_array_equal(a.thresholds, b.thresholds)
    assert not np.array_equal(a.weights, c.weights)  # the seed really drives the splits


@pytest.mark.fits
def test_the_feature_choice_is_the_same_in_worker_processes(
    encoder: Encoder, targets: list[TargetData], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fold fits of the feature choice may run in other processes; what they find must not depend on it."""
    from eco_guard.classifier.fit import selection

    bg = background_prompts()[::4]
    monkeypatch.setenv(selection.WORKERS_ENV, "1")
    alone, alone_fits = Classifier.fit(encoder, targets, target_fpr=0.05, seed=7, background=bg, progress=False)
    monkeypatch.setenv(selection.WORKERS_ENV, "2")
    monkeypatch.setattr(selection, "PARALLEL_MIN_SECONDS", 0.0)  # start workers however small the work
    import joblib

    pools: list[int] = []

    class Counted(joblib.Parallel):
        def __init__(self, *args: object, **kwargs: object) -> None:
            pools.append(kwargs["n_jobs"])  # type: ignore[arg-type]
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(joblib, "Parallel", Counted)
    pooled, pooled_fits = Classifier.fit(encoder, targets, target_fpr=0.05, seed=7, background=bg, progress=False)
    if len(os.sched_getaffinity(0)) > 1:
        assert pools == [2]  # the folds after the first ran in two worker processes
    assert pooled_fits[0].view_note == alone_fits[0].view_note
    np.testing.assert_array_equal(pooled.weights, alone.weights)
    np.testing.assert_array_equal(pooled.thresholds, alone.thresholds)


def test_fit_workers_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from eco_guard.classifier.fit import selection

    cpus = len(os.sched_getaffinity(0))
    monkeypatch.setenv(selection.WORKERS_ENV, "1")
    assert selection.fit_workers() == 1
    monkeypatch.setenv(selection.WORKERS_ENV, "64")
    assert selection.fit_workers() == cpus
    monkeypatch.delenv(selection.WORKERS_ENV)
    assert selection.fit_workers() == cpus
    for bad in ("two", "0", "-1"):
        monkeypatch.setenv(selection.WORKERS_ENV, bad)
        with pytest.raises(UserError, match=selection.WORKERS_ENV):
            selection.fit_workers()


@pytest.mark.fits
def test_fit_rejects_bad_targets(encoder: Encoder) -> None:
    with pytest.raises(UserError, match="at least one target"):
        Classifier.fit(encoder, [], target_fpr=0.01, progress=False)
    dup = [TargetData("x", ["a"], []), TargetData("x", ["b"], [])]
    with pytest.raises(UserError, match="duplicate"):
        Classifier.fit(encoder, dup, target_fpr=0.01, progress=False)
    with pytest.raises(UserError, match="no forget examples"):
        Classifier.fit(encoder, [TargetData("x", ["  "], ["r"])], target_fpr=0.01, progress=False)


def test_held_out_paraphrases_are_flagged_for_the_right_target(fitted: tuple[Classifier, list[TargetFit]]) -> None:
    clf, _ = fitted
    verdicts = clf.decide(clf.score([text for _, text in HELD_OUT_POSITIVES]))
    for (target, text), v in zip(HELD_OUT_POSITIVES, verdicts):
        assert v.flagged and v.target_id == target, (text, v)
        assert v.target_index == clf.target_ids.index(target)
        assert v.score > v.threshold


def test_generic_prompts_are_not_flagged(fitted: tuple[Classifier, list[TargetFit]]) -> None:
    clf, _ = fitted
    scores = clf.score(GENERIC_NEGATIVES)
    assert scores.shape == (len(GENERIC_NEGATIVES), 2)
    assert np.all((scores >= 0) & (scores <= 1))
    for text, v, row in zip(GENERIC_NEGATIVES, clf.decide(scores), scores):
        assert not v.flagged and v.target_id is None and v.target_index is None, (text, v)
        assert v.score == row.max() > 0  # the closest target's score, not a placeholder 0
        assert v.threshold == clf.thresholds[int(row.argmax())]

