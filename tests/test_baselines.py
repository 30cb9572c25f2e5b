"""The issue's baseline detectors: each behaves as its definition says, and on the real D1
rows they reproduce the numbers the issue reports for them (so the benchmark's reading
of the protocol and the issue's agree)."""

from __future__ import annotations


import numpy as np
import pytest

from eco_guard.classifier.features.encoder import Encoder, resolve_encoder_path

from .conftest import benchmark_module, shared_data

_baselines = benchmark_module("baselines")
BaselineTarget = _baselines.BaselineTarget
EmbeddingLogisticBaseline = _baselines.EmbeddingLogisticBaseline
KeywordBaseline = _baselines.KeywordBaseline
TfidfLogisticBaseline = _baselines.TfidfLogisticBaseline
run_baseline = _baselines.run_baseline

PERSON = BaselineTarget(
    "veldkamp",
    forget=[
        "Who is Orsolya Veldkamp?",
        "Where was Orsolya Veldkamp born?",
        "What novels has Orsolya Veldkamp written?",
        "Which awards did Veldkamp win for her fiction?",
    ],
    retain=[
        "Who is Tomasz Grabowiecki?",
        "Where was Tomasz Grabowiecki born?",
        "What novels has Ilse Marchetti written?",
        "Which awards did Ilse Marchetti win for her poetry?",
    ],
)
BAKING = BaselineTarget(
    "sourdough",
    forget=[
        "How do I feed a sourdough starter?",
        "Why does my sourdough loaf come out flat?",
        "How long should sourdough dough proof in the fridge?",
    ],
    retain=["How do I bake banana bread?", "What temperature should a pizza oven reach?"],
)


def test_keywords_are_forget_words_no_negative_uses() -> None:
    score = KeywordBaseline().fit([PERSON])
    # "Orsolya", "Veldkamp" and the pair "orsolya veldkamp": three keywords.
    assert score(["Tell me about Orsolya Veldkamp."]).tolist() == [3.0]
    # Words the retain examples also use ("who", "is", "born", "novels") are not keywords.
    assert score(["Who is born with novels?"]).tolist() == [0.0]
    # The score is the best target's count, so a second target adds its own list.
    both = KeywordBaseline().fit([PERSON, BAKING])
    # "sourdough", "starter", "sourdough starter" and "a sourdough" ("a" alone is in a retain example).
    assert both(["Is a sourdough starter alive?"]).tolist() == [4.0]


@pytest.mark.parametrize("make", [TfidfLogisticBaseline, lambda: EmbeddingLogisticBaseline(Encoder(resolve_encoder_path("default")))])
def test_logistic_baselines_rank_a_new_forget_question_above_its_neighbours(make) -> None:
    score = make().fit([PERSON, BAKING])
    values = score(["What is Orsolya Veldkamp's latest novel?", "What is Ilse Marchetti's latest novel?", "How do I feed a sourdough starter?"])
    assert values.shape == (3,)
    assert values[0] > values[1]
    assert values[2] > values[1]  # the max over targets: the second target's own example scores high


def test_run_baseline_calibrates_on_held_out_retain_halves_when_no_calibration_set() -> None:
    negatives = [f"Where did Ilse Marchetti spend the summer of {1900 + k}?" for k in range(120)]
    target = BaselineTarget("veldkamp", PERSON.forget, negatives)
    run = run_baseline(
        KeywordBaseline(),
        [target],
        None,
        positives={"new": ["Did Orsolya Veldkamp ever teach?"]},
        negatives={"other": ["Did Ilse Marchetti ever teach?"]},
        target_fpr=0.01,
    )
    # The second half of the retain list is held out, never trained on.
    assert run.n_calibration == 60
    assert "second half" in run.calibration
    assert run.sets["new"] == {"n": 1, "tpr": 1.0, "auroc_vs_all_negatives": 1.0}
    assert run.sets["other"] == {"n": 1, "fpr": 0.0}


def test_run_baseline_threshold_holds_the_rate_on_its_calibration_rows() -> None:
    calibration = [f"Question number {k} about gardening and soil." for k in range(300)]
    run = run_baseline(
        TfidfLogisticBaseline(), [PERSON, BAKING], calibration, {"p": PERSON.forget}, {"cal again": calibration}, 0.01
    )
    assert run.n_calibration == 300
    assert run.sets["cal again"]["fpr"] <= 0.01
    with pytest.raises(ValueError, match="no held-out negatives"):
        run_baseline(KeywordBaseline(), [BaselineTarget("t", ["a b"], [])], None, {}, {}, 0.01)


@pytest.mark.parametrize(
    "make,reported",
    [
        # Issue 3's table: TPR test / paraphrases, worst FPR.
        (KeywordBaseline, (0.93, 0.91, 0.00)),
        (TfidfLogisticBaseline, (0.92, 0.87, 0.014)),
    ],
)
def test_d1_baselines_reproduce_the_issues_numbers(make, reported) -> None:
    shared_data("tofu", "forget10_perturbed.json")
    detection = benchmark_module("detection")
    protocol = detection.protocol_d1()
    targets = [BaselineTarget(t.id, t.forget, t.retain) for t in protocol.targets]
    run = run_baseline(make(), targets, protocol.calibration, protocol.positives, protocol.negatives, 0.01)
    tpr_test, tpr_para, worst = reported
    assert run.sets["test questions"]["tpr"] == pytest.approx(tpr_test, abs=0.03)
    assert run.sets["paraphrases"]["tpr"] == pytest.approx(tpr_para, abs=0.03)
    assert max(float(v["fpr"]) for v in run.sets.values() if "fpr" in v) == pytest.approx(worst, abs=0.01)
    assert np.isfinite(run.threshold)
