"""The fitted classifier: deciding, saving and loading, broken directories, and its cost per prompt."""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from eco_guard.classifier import Classifier, Encoder, TargetFit, Verdict
from eco_guard.errors import GuardLoadError, InputError, UserError

from tests.classifier.texts import GENERIC_NEGATIVES, HELD_OUT_POSITIVES


def test_layers_view_round_trips_and_scores_the_layer_blocks(
    fitted: tuple[Classifier, list[TargetFit]], encoder: Encoder, tmp_path: Path
) -> None:
    clf, _ = fitted
    rng = np.random.default_rng(0)
    width = encoder.feature_dim + clf.lexicon.size
    weights = rng.normal(size=(2, width))
    layered = Classifier(encoder, clf.target_ids, weights, clf.bias, clf.thresholds, clf.lexicon, view="layers")
    texts = ["What is the capital of France?", "How do I bake bread?"]
    expected = 1 / (1 + np.exp(-(encoder.features(texts) @ weights[:, : encoder.feature_dim].T
                                 + clf.lexicon.transform(texts) @ weights[:, encoder.feature_dim :].T + clf.bias)))
    np.testing.assert_allclose(layered.score(texts), expected, rtol=1e-5)
    layered.save(tmp_path)
    loaded = Classifier.load(tmp_path, encoder)
    assert loaded.view == "layers"
    np.testing.assert_array_equal(loaded.score(texts), layered.score(texts))
    with pytest.raises(UserError, match="feature view"):
        Classifier(encoder, clf.target_ids, weights, clf.bias, clf.thresholds, clf.lexicon, view="pixels")  # type: ignore[arg-type]
    with pytest.raises(UserError, match="head shapes"):
        Classifier(encoder, clf.target_ids, weights, clf.bias, clf.thresholds, clf.lexicon, view="sentence")


def test_decide_reports_largest_margin(encoder: Encoder) -> None:
    clf = Classifier(encoder, ["a", "b"], np.zeros((2, 384)), np.zeros(2), np.array([0.5, 0.9]))
    hit, miss = clf.decide(np.array([[0.7, 0.95], [0.3, 0.4]]))
    assert hit == Verdict(0, "a", 0.7, 0.5, True)  # margin 0.2 beats 0.05 despite the lower score
    assert miss == Verdict(None, None, 0.4, 0.9, False)
    with pytest.raises(InputError):
        clf.decide(np.zeros((1, 3)))


def test_save_load_round_trip(fitted: tuple[Classifier, list[TargetFit]], encoder: Encoder, tmp_path: Path) -> None:
    clf, _ = fitted
    clf.save(tmp_path / "guard")
    loaded = Classifier.load(tmp_path / "guard", encoder)
    texts = [t for _, t in HELD_OUT_POSITIVES] + GENERIC_NEGATIVES
    assert loaded.target_ids == clf.target_ids
    np.testing.assert_array_equal(loaded.thresholds, clf.thresholds)
    np.testing.assert_array_equal(loaded.score(texts), clf.score(texts))
    # Thresholds hold only at the precision they were calibrated at: a mismatch is refused.
    with pytest.raises(GuardLoadError, match="precision|bfloat16"):
        Classifier.load(tmp_path / "guard", Encoder(encoder.path, precision="bfloat16"))


def _break_missing_dir(d: Path) -> None:
    for f in d.iterdir():
        f.unlink()


def _break_weights(d: Path) -> None:
    (d / "classifier.safetensors").write_bytes(b"\x00garbage")


def _break_json(d: Path) -> None:
    (d / "classifier.json").write_text("{")


def _edit_json(**changes: object) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        meta = json.loads((d / "classifier.json").read_text())
        meta.update(changes)
        (d / "classifier.json").write_text(json.dumps(meta))

    return edit


@pytest.mark.parametrize(
    "breaker",
    [
        _break_missing_dir,
        _break_weights,
        _break_json,
        _edit_json(dim=768),
        _edit_json(format_version=99),
        _edit_json(target_ids=["only-one"]),
        _edit_json(feature_view="pixels"),
        _edit_json(feature_layers=[6]),
        _edit_json(lexical_weight=-1.0),
        _edit_json(lexical_weight="heavy"),
        _edit_json(lexical_weight=None),
    ],
    ids=[
        "missing", "corrupt-weights", "corrupt-json", "dim-mismatch", "version", "ids-mismatch", "view", "layers",
        "lexical-weight", "lexical-weight-type", "lexical-weight-missing",
    ],
)
def test_load_broken_dir_raises(
    fitted: tuple[Classifier, list[TargetFit]], encoder: Encoder, tmp_path: Path, breaker: Callable[[Path], None]
) -> None:
    clf, _ = fitted
    clf.save(tmp_path)
    breaker(tmp_path)
    with pytest.raises(GuardLoadError):
        Classifier.load(tmp_path, encoder)


def test_single_prompt_decision_latency(fitted: tuple[Classifier, list[TargetFit]]) -> None:
    """A one-prompt decision costs about one encoder forward: the heads, the lexical row and
    the threshold add little on top. Compared as a ratio of medians measured in this process,
    interleaved, so a slow or shared machine slows both sides alike (the absolute goal,
    p50 <= 10 ms, is the speed benchmark's). The decision itself is checked too: the same
    verdict every time, and the one a batch gives."""
    clf, _ = fitted
    prompt = "What is the best way to learn the French subjunctive?"
    expected = clf.decide(clf.score([prompt, "What is the capital of France?"]))[0]
    for _ in range(5):
        clf.decide(clf.score([prompt]))
        clf.encoder.features([prompt])
    decide_ms, encode_ms, verdicts = [], [], set()
    for _ in range(40):
        start = time.perf_counter()
        verdicts.add(clf.decide(clf.score([prompt]))[0].target_id)
        decide_ms.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        clf.encoder.features([prompt])
        encode_ms.append((time.perf_counter() - start) * 1000)
    assert verdicts == {expected.target_id} == {None}
    ratio = statistics.median(decide_ms) / statistics.median(encode_ms)
    print(f"\none-prompt decision p50 {statistics.median(decide_ms):.2f} ms = {ratio:.2f} x the encoder forward")
    assert ratio < 1.5, f"deciding one prompt costs {ratio:.2f} x its encoder forward"
