"""Zeroth-order strength search and ``strength: auto`` in fit, on the real bundled model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from eco_guard.corruption import Corruption
from eco_guard.optimize import SPAN, SearchConfig, SearchJob, search_strength, search_strengths
from eco_guard.runner.base import MaskSpec

TINY = SearchConfig(steps=1, max_items=2, max_new_tokens=10, progress=False)
QUESTIONS = ["What is the capital of France?", "Which city is the capital of Germany?", "What is the capital of Italy?"]
ANSWERS = ["Paris", "Berlin", "Rome"]


@pytest.mark.slow
def test_search_forgets_within_bounds_and_is_reproducible(runner) -> None:
    base = Corruption("rand_noise_first_n", dims=576, strength=0.27, seed=7)
    first = search_strength(runner, QUESTIONS, ANSWERS, base, MaskSpec(), config=TINY)
    assert first.objective == "answer_recall" and first.clean_metric > 0  # the model knows these
    assert base.strength / SPAN <= first.strength <= base.strength * SPAN
    assert len(first.curve) >= 3  # start and the two finite-difference probes
    chosen = next(p for p in first.curve if p.strength == first.strength)
    assert chosen.loss == min(p.loss for p in first.curve)
    assert chosen.metric < first.clean_metric  # corruption makes it forget
    assert first.fluency_bound is not None and first.fluency_bound < first.clean_fluency < 0
    again = search_strength(runner, QUESTIONS, ANSWERS, base, MaskSpec(), config=TINY)
    assert again.to_dict() == first.to_dict()  # same seed, same search, same answer


@pytest.mark.slow
def test_searches_run_together_find_what_each_finds_alone(runner) -> None:
    """Batched across targets, each search still follows its own answers: same curves, same strengths."""
    config = SearchConfig(steps=1, max_items=2, max_new_tokens=10, batch_size=8, progress=False)
    jobs = [
        SearchJob(QUESTIONS, ANSWERS, Corruption("rand_noise_first_n", dims=576, strength=0.27, seed=7), MaskSpec()),
        SearchJob(QUESTIONS[::-1], [None, None, None], Corruption("rand_noise_first_n", dims=576, strength=0.27, seed=1), MaskSpec()),
        SearchJob(["Who wrote Hamlet?", "Who painted the Mona Lisa?"], ["Shakespeare", "Leonardo"], Corruption("rand_noise_first_n", dims=64, strength=0.5, seed=2), MaskSpec()),
    ]
    together = search_strengths(runner, jobs, config=config)
    alone = [search_strength(runner, j.questions, j.answers, j.base, j.mask, config=config) for j in jobs]
    assert [r.objective for r in together] == ["answer_recall", "divergence", "answer_recall"]
    assert [r.to_dict() for r in together] == [r.to_dict() for r in alone]


@pytest.mark.slow
def test_search_without_answers_falls_back_to_divergence(runner) -> None:
    base = Corruption("rand_noise_first_n", dims=576, strength=0.27, seed=1)
    result = search_strength(runner, QUESTIONS, [None, None, None], base, MaskSpec(), config=TINY)
    assert result.objective == "divergence" and "no answers" in result.note
    assert math.isfinite(result.strength) and result.curve


@pytest.mark.slow
def test_search_multiple_choice_uses_other_answers_as_distractors(runner) -> None:
    base = Corruption("rand_noise_first_n", dims=576, strength=0.27, seed=3)
    result = search_strength(runner, QUESTIONS, ANSWERS, base, MaskSpec(), metric="mc_accuracy", target=1 / 3, config=TINY)
    assert result.objective == "mc_accuracy" and result.n_items == 2
    assert all(0.0 <= p.metric <= 1.0 for p in result.curve)


@pytest.mark.fits
@pytest.mark.slow
def test_fit_auto_strength_is_optimised_and_reported(tmp_path: Path) -> None:
    from eco_guard.fitting import fit_guard

    (tmp_path / "forget.jsonl").write_text(
        "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(QUESTIONS, ANSWERS)), encoding="utf-8"
    )
    (tmp_path / "policy.yaml").write_text(
        "version: 1\ntargets:\n  - id: capitals\n"
        "    forget: {file: forget.jsonl, field: question, answer_field: answer}\n"
        "    retain: {examples: ['How do I boil an egg?', 'What is a prime number?']}\n"
        "    corruption: {method: rand_noise_first_n, dims: 576, strength: auto, scope: entities}\n",
        encoding="utf-8",
    )
    fit_guard(tmp_path / "policy.yaml", tmp_path / "g", seed=0, progress=False, search=TINY)
    doc = yaml.safe_load((tmp_path / "g" / "guard.yaml").read_text(encoding="utf-8"))
    fitted = doc["fitted"]["targets"][0]
    assert fitted["strength_source"] == "optimized"
    assert fitted["scope"] == "entities" and fitted["terms"]  # extracted from the forget questions
    report = json.loads((tmp_path / "g" / "report.json").read_text(encoding="utf-8"))
    assert "strength_curve.png" in report["plots"] and (tmp_path / "g" / "strength_curve.png").stat().st_size > 0
    assert report["targets"][0]["search"]["strength"] == fitted["corruption"]["strength"]
    report_md = (tmp_path / "g" / "report.md").read_text(encoding="utf-8")
    assert "Corruption strength search" in report_md
    assert "## Classifier features" in report_md and report["targets"][0]["feature_view_note"] in report_md
