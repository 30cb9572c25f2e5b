"""Strength search and ``strength: auto`` in fit, on the real bundled model."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from eco_guard.corruption import Corruption
from eco_guard.optimize import SPAN, SearchConfig, SearchJob, grid, search_strength, search_strengths
from eco_guard.runner.base import MaskSpec

TINY = SearchConfig(grid=5, max_items=2, max_new_tokens=10, confirm=2, progress=False)
QUESTIONS = ["What is the capital of France?", "Which city is the capital of Germany?", "What is the capital of Italy?"]
ANSWERS = ["Paris", "Berlin", "Rome"]


def test_grid_is_log_spaced_around_the_default() -> None:
    g = grid(0.27, 9)
    assert g[4] == pytest.approx(0.27) and g[0] == pytest.approx(0.027) and g[-1] == pytest.approx(2.7)
    ratios = [b / a for a, b in zip(g, g[1:])]
    assert max(ratios) == pytest.approx(min(ratios))


@pytest.mark.slow
def test_search_forgets_within_bounds_and_is_reproducible(runner) -> None:
    base = Corruption("rand_noise_first_n", dims=576, strength=0.27, seed=7)
    first = search_strength(runner, QUESTIONS, ANSWERS, base, MaskSpec(), config=TINY)
    assert first.objective == "answer_recall" and first.clean_metric > 0  # the model knows these
    assert base.strength / SPAN - 1e-12 <= first.strength <= base.strength * SPAN + 1e-12
    assert 1 <= first.n_generated <= TINY.confirm and first.n_scored >= 1
    chosen = next(p for p in first.curve if p.strength == first.strength)
    assert chosen.generated and chosen.loss == min(p.loss for p in first.curve if p.generated)
    assert chosen.metric < first.clean_metric  # corruption makes it forget
    assert first.fluency_bound is not None and first.fluency_bound < first.clean_fluency < 0
    assert first.converged == (not first.warnings)
    assert not first.converged or chosen.loss == 0.0
    again = search_strength(runner, QUESTIONS, ANSWERS, base, MaskSpec(), config=TINY)
    assert again.to_dict() == first.to_dict()  # same seed, same search, same answer


@pytest.mark.slow
def test_teacher_forced_scores_agree_with_greedy_generation(runner) -> None:
    """Unperturbed, every token of the model's own greedy answer is the argmax: the prediction's exact case."""
    from eco_guard.runner.base import GenerationOptions, GenerationRow, bare_rows

    ids = runner.generate_ids(bare_rows(QUESTIONS[:2]), GenerationOptions(max_new_tokens=8))
    scores = runner.score_continuations(bare_rows(QUESTIONS[:2]), ids)
    assert all(all(s.greedy) for s in scores)
    assert all(len(s.logprobs) == len(i) and max(s.logprobs) <= 0 for s, i in zip(scores, ids))
    noisy_rows = [GenerationRow(q, Corruption("rand_noise_first_n", 576, 2.7, 1)) for q in QUESTIONS[:2]]
    noisy = runner.score_continuations(noisy_rows, ids)
    assert sum(sum(s.logprobs) for s in noisy) < sum(sum(s.logprobs) for s in scores)


@pytest.mark.slow
def test_batched_scores_with_a_shared_header_match_each_row_scored_alone(runner) -> None:
    """Rows of different targets share a scoring batch and their system header's prefill; nothing else changes."""
    import eco_guard.runner.embedding_runner as embedding_runner
    from eco_guard.runner.base import GenerationOptions, GenerationRow, bare_rows

    ids = runner.generate_ids(bare_rows(QUESTIONS), GenerationOptions(max_new_tokens=8))
    rows = [
        GenerationRow(QUESTIONS[0], Corruption("rand_noise_first_n", 576, 0.5, 1)),
        GenerationRow(QUESTIONS[1], None),
        GenerationRow(QUESTIONS[2], Corruption("rand_noise_first_n", 64, 2.0, 2), MaskSpec(scope="entities", terms=("Italy",))),
    ]
    prompts = [runner.prepare(r.messages, r.mask) for r in rows]
    assert embedding_runner._shared_prefix(prompts, rows) >= embedding_runner.MIN_SHARED_PREFIX  # the header is shared
    together = runner.score_continuations(rows, ids)
    alone = [runner.score_continuations([r], [i])[0] for r, i in zip(rows, ids)]
    for t, a in zip(together, alone):
        assert t.greedy == a.greedy
        assert t.logprobs == pytest.approx(a.logprobs, abs=1e-4)


@pytest.mark.slow
def test_search_bisects_the_grid(runner) -> None:
    """The prediction falls with strength, so the weakest point that meets it is found in about log2(grid) scores."""
    config = replace(TINY, grid=9)
    result = search_strength(runner, QUESTIONS, ANSWERS, Corruption("rand_noise_first_n", dims=576, strength=0.27, seed=7), MaskSpec(), config=config)
    assert 1 <= result.n_scored <= math.ceil(math.log2(config.grid + 1))
    predicted = sorted((p.strength, p.predicted) for p in result.curve if p.predicted is not None)
    assert len(predicted) == result.n_scored


@pytest.mark.slow
def test_searches_run_together_find_what_each_finds_alone(runner) -> None:
    """Batched across targets, each search still follows its own rows: same curves, same strengths."""
    jobs = [
        SearchJob(QUESTIONS, ANSWERS, Corruption("rand_noise_first_n", dims=576, strength=0.27, seed=7), MaskSpec()),
        SearchJob(QUESTIONS[::-1], [None, None, None], Corruption("rand_noise_first_n", dims=576, strength=0.27, seed=1), MaskSpec()),
        SearchJob(["Who wrote Hamlet?", "Who painted the Mona Lisa?"], ["Shakespeare", "Leonardo"], Corruption("rand_noise_first_n", dims=64, strength=0.5, seed=2), MaskSpec()),
    ]
    together = search_strengths(runner, jobs, config=TINY)
    alone = [search_strength(runner, j.questions, j.answers, j.base, j.mask, config=TINY) for j in jobs]
    assert [r.objective for r in together] == ["answer_recall", "divergence", "answer_recall"]
    assert [r.to_dict() for r in together] == [r.to_dict() for r in alone]


@pytest.mark.slow
def test_search_that_cannot_meet_its_objective_warns(runner) -> None:
    """A span too weak to forget (strength 1e-5 and neighbours) must say so, with what to try."""
    base = Corruption("rand_noise_first_n", dims=576, strength=1e-5, seed=7)
    result = search_strength(runner, QUESTIONS, ANSWERS, base, MaskSpec(), config=TINY)
    assert not result.converged
    codes = [w.code for w in result.warnings]
    assert "objective_not_met" in codes
    w = result.warnings[codes.index("objective_not_met")]
    assert "scope: prompt" in w.hint and f"{result.strength:.4g}" in w.message


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
    assert all(0.0 <= p.predicted <= 1.0 for p in result.curve if p.predicted is not None)
    assert result.n_generated >= 1


def _capitals_policy(tmp_path: Path, answers: list[str] = ANSWERS) -> Path:
    (tmp_path / "forget.jsonl").write_text(
        "".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in zip(QUESTIONS, answers)), encoding="utf-8"
    )
    (tmp_path / "policy.yaml").write_text(
        "version: 1\ntargets:\n  - id: capitals\n"
        "    forget: {file: forget.jsonl, field: question, answer_field: answer}\n"
        "    retain: {examples: ['How do I boil an egg?', 'What is a prime number?']}\n"
        "    corruption: {method: rand_noise_first_n, dims: 576, strength: auto, scope: entities}\n",
        encoding="utf-8",
    )
    return tmp_path / "policy.yaml"


@pytest.mark.fits
@pytest.mark.slow
def test_fit_auto_strength_is_optimised_reported_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eco_guard.fitting import fit_guard

    monkeypatch.setenv("ECO_GUARD_FIT_CACHE", str(tmp_path / "fits"))
    policy = _capitals_policy(tmp_path)
    first = fit_guard(policy, tmp_path / "g", seed=0, progress=False, search=TINY)
    assert first.reused["search"] == (0, 1)
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
    assert "worst estimated false-positive rate" in report["summary"]

    again = fit_guard(policy, tmp_path / "g2", seed=0, progress=False, search=TINY)
    assert again.reused["search"] == (1, 1) and again.targets[0].search_reused
    assert again.targets[0].fitted.corruption == first.targets[0].fitted.corruption

    # editing the target's answers redoes its search; its unchanged questions' clean answers are reused
    edited = fit_guard(_capitals_policy(tmp_path, ["Paris", "Berlin", "Roma"]), tmp_path / "g3", seed=0, progress=False, search=TINY)
    assert edited.reused["search"] == (0, 1)
    assert edited.reused["clean_answers"][0] == 3
