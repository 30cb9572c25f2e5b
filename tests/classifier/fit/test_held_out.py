"""Which negatives train and which calibrate."""

from __future__ import annotations

from eco_guard.classifier.fit import held_out_sources


def test_held_out_background_is_kept_apart_by_corpus_in_split_order() -> None:
    corpora = {"chat": ["a", "b", "c"], "people": ["d", "b"], "exams": ["e"]}
    assert held_out_sources(corpora, ["e", "b", "d", "a"]) == {"chat": ["b", "a"], "people": ["d"], "exams": ["e"]}

