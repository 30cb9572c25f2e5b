"""The Guard on a real fitted guard (the demo policy) and the real bundled models."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from eco_guard.audit import JsonlAudit
from eco_guard.fitting import fit_guard
from eco_guard.guard import Guard
from eco_guard.runner.base import GenerationOptions, bare_rows

pytestmark = pytest.mark.slow

OPTS = GenerationOptions(max_new_tokens=24)
FLAGGED = "What is the capital of France?"
UNFLAGGED = "What is the capital of Australia?"


def test_check_scores_every_request(demo_guard: Guard) -> None:
    hit = demo_guard.check(FLAGGED)
    miss = demo_guard.check(UNFLAGGED)
    assert hit.flagged and hit.target == "france" and hit.action == "corrupt"
    assert hit.score > hit.threshold
    assert not miss.flagged and miss.action == "pass" and miss.target is None
    # A pass still carries its real score, not a placeholder.
    assert 0.0 < miss.score < miss.threshold
    assert set(miss.scores) == {"france"}
    assert hit.corruption is not None and hit.corruption.method == "rand_noise_first_n"


def test_unflagged_answer_is_the_bare_models(demo_guard: Guard, runner) -> None:
    result = demo_guard.invoke(UNFLAGGED, OPTS)
    assert not result.decision.flagged
    assert result.text == runner.generate(bare_rows([[{"role": "user", "content": UNFLAGGED}]]), OPTS)[0]
    assert "canberra" in result.text.lower()


def test_flagged_answer_loses_the_fact(demo_guard: Guard) -> None:
    result = demo_guard.invoke(FLAGGED, OPTS)
    assert result.decision.action == "corrupt"
    assert "paris" not in result.text.lower()
    assert demo_guard.invoke(FLAGGED, OPTS).text == result.text  # reproducible per prompt


def test_batch_mixes_rows_and_matches_single_decisions(demo_guard: Guard) -> None:
    prompts = [FLAGGED, UNFLAGGED, "Who was Napoleon Bonaparte?", "How do I bake bread?"]
    results = demo_guard.batch(prompts, OPTS)
    assert [r.decision.flagged for r in results] == [demo_guard.check(p).flagged for p in prompts]
    assert results[0].decision.flagged and not results[1].decision.flagged


def test_stream_and_async_twins(demo_guard: Guard) -> None:
    stream = demo_guard.stream(UNFLAGGED, OPTS)
    assert not stream.decision.flagged
    pieces = list(stream)
    assert pieces and "".join(pieces) == demo_guard.invoke(UNFLAGGED, OPTS).text
    # the output stage holds each sentence until it has passed: pieces are whole sentences
    assert all(p.rstrip().endswith((".", "!", "?")) for p in pieces[:-1])
    # without an output stage, the same answer streams token by token
    plain = Guard(classifier=demo_guard.classifier, rules=demo_guard.rules, runner=demo_guard.runner)
    assert len(list(plain.stream(UNFLAGGED, OPTS))) > 1

    async def main() -> None:
        r = await demo_guard.ainvoke(FLAGGED, OPTS)
        assert r.decision.flagged
        rs = await demo_guard.abatch([FLAGGED, UNFLAGGED], OPTS)
        assert [x.decision.flagged for x in rs] == [True, False]
        s = await demo_guard.astream(UNFLAGGED, OPTS)
        got = "".join([p async for p in s])
        assert got == "".join(pieces)
        d = await demo_guard.acheck(FLAGGED)
        assert d.flagged

    asyncio.run(main())


def test_followup_turn_is_judged_with_its_conversation(demo_guard: Guard) -> None:
    chat = [
        {"role": "user", "content": "Tell me about the history of France."},
        {"role": "assistant", "content": "It is a long story."},
        {"role": "user", "content": "And what about its capital?"},
    ]
    assert demo_guard.check(chat).flagged


def _guard_with(demo_guard_dir: Path, tmp_path: Path, runner, **policy_changes) -> Guard:
    doc = yaml.safe_load((demo_guard_dir / "guard.yaml").read_text())
    for key, value in policy_changes.items():
        if key == "action":
            doc["policy"]["targets"][0]["action"] = value
        else:
            doc["policy"][key] = value
    out = tmp_path / "g"
    out.mkdir(parents=True)
    for f in demo_guard_dir.iterdir():
        if f.is_file():
            (out / f.name).write_bytes(f.read_bytes())
    (out / "guard.yaml").write_text(yaml.safe_dump(doc), encoding="utf-8")
    return Guard.load(out, runner=runner)


def test_refuse_and_shadow_flag_actions(demo_guard_dir: Path, tmp_path: Path, runner) -> None:
    refuse = _guard_with(demo_guard_dir, tmp_path / "r", runner, action="refuse")
    r = refuse.invoke(FLAGGED, OPTS)
    assert r.decision.action == "refuse" and r.text == refuse.rule("france").refusal
    shadow = _guard_with(demo_guard_dir, tmp_path / "s", runner, action="flag")
    s = shadow.invoke(FLAGGED, OPTS)
    assert s.decision.flagged and s.decision.action == "flag"
    assert s.text == runner.generate(bare_rows([[{"role": "user", "content": FLAGGED}]]), OPTS)[0]


class _BrokenScores:
    """Wraps a real classifier but fails at scoring, to exercise on_error."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.target_ids = inner.target_ids
        self.thresholds = inner.thresholds

    def score(self, texts):
        raise RuntimeError("encoder crashed")

    def decide(self, scores):
        return self._inner.decide(scores)


@pytest.mark.parametrize("mode, flagged", [("fail_closed", True), ("fail_open", False)])
def test_on_error_policy(demo_guard: Guard, runner, mode: str, flagged: bool) -> None:
    g = Guard(classifier=_BrokenScores(demo_guard.classifier), rules=demo_guard.rules, runner=runner, on_error=mode)
    d = g.check(UNFLAGGED)
    assert d.flagged is flagged
    assert d.error and "encoder crashed" in d.error


@pytest.mark.parametrize("mode", ["none", "hash", "full"])
def test_audit_records_every_request(demo_guard: Guard, runner, tmp_path: Path, mode: str) -> None:
    path = tmp_path / "audit.jsonl"
    g = Guard(classifier=demo_guard.classifier, rules=demo_guard.rules, runner=runner, audit=JsonlAudit(path, mode))
    g.check(FLAGGED)
    g.batch([FLAGGED, UNFLAGGED], OPTS)
    list(g.stream(UNFLAGGED, OPTS))
    g.close()
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 4
    assert [x["flagged"] for x in lines] == [True, True, False, False]
    assert all("score" in x and "threshold" in x and "request_id" in x for x in lines)
    if mode == "none":
        assert all("messages" not in x and "prompt_sha256" not in x for x in lines)
    elif mode == "hash":
        assert all(x["prompt_sha256"].startswith("sha256:") for x in lines)
        assert FLAGGED not in path.read_text()
    else:
        assert lines[0]["messages"][0]["content"] == FLAGGED


def test_load_restores_exactly_and_fit_is_deterministic(demo_guard_dir: Path, demo_guard: Guard, tmp_path: Path) -> None:
    policy = demo_guard_dir.parent / "france.yaml"
    fit_guard(policy, tmp_path / "again", seed=0, progress=False)
    assert (tmp_path / "again" / "classifier.safetensors").read_bytes() == (
        demo_guard_dir / "classifier.safetensors"
    ).read_bytes()
    a = yaml.safe_load((demo_guard_dir / "guard.yaml").read_text())
    b = yaml.safe_load((tmp_path / "again" / "guard.yaml").read_text())
    assert a["fitted"] == b["fitted"] and a["data"] == b["data"]
    reloaded = Guard.load(tmp_path / "again")
    texts = [FLAGGED, UNFLAGGED, "Which French region is famous for wine?"]
    np.testing.assert_array_equal(reloaded.classifier.score(texts), demo_guard.classifier.score(texts))
    assert [r.corruption for r in reloaded.rules] == [r.corruption for r in demo_guard.rules]


@pytest.mark.fits
def test_bfloat16_policy_fits_and_serves_at_its_precision(demo_policy_text: str, tmp_path: Path) -> None:
    """``classifier.precision`` is used for fitting and recorded, so loading serves at the same precision."""
    text = demo_policy_text.replace("  target_fpr: 0.01", "  target_fpr: 0.01\n  precision: bfloat16").replace(
        "strength: auto", "strength: 1.0"
    )
    assert "precision: bfloat16" in text and "strength: 1.0" in text
    (tmp_path / "p.yaml").write_text(text, encoding="utf-8")
    fit_guard(tmp_path / "p.yaml", tmp_path / "g", seed=0, progress=False)
    guard = Guard.load(tmp_path / "g", audit=False)
    assert guard.classifier.encoder.precision == "bfloat16"
    assert guard.check(FLAGGED).flagged and not guard.check(UNFLAGGED).flagged
