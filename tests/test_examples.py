"""The integration examples run end to end on the bundled models (imported, then main())."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration_support import FLAGGED as FRANCE, example_guard_dir, guard_dir  # noqa: F401 - fixtures


def _run(name: str, guard: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Any, str]:
    module = importlib.import_module(name)
    result = module.main(["--guard", str(guard), "--max-new-tokens", "16"])
    return result, capsys.readouterr().out


@pytest.mark.slow
def test_langchain_rag(example_guard_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("langchain_core")
    answers, out = _run("langchain_rag", example_guard_dir, capsys)
    assert "Canberra" in answers["What is the capital of Australia?"]
    assert "Paris" not in answers[FRANCE]
    assert "action=pass" in out and "action=corrupt" in out


@pytest.mark.slow
def test_langchain_agent(example_guard_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("langchain")
    transcripts, out = _run("langchain_agent", example_guard_dir, capsys)
    france = transcripts["How many people live in France?"]
    australia = transcripts["How many people live in Australia?"]
    assert france[-1].response_metadata["eco_guard"]["action"] == "corrupt"
    assert [m.type for m in australia] == ["human", "ai", "tool", "ai"]
    assert "calls population" in out


@pytest.mark.slow
def test_llamaindex_query(example_guard_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("llama_index.core")
    responses, out = _run("llamaindex_query", example_guard_dir, capsys)
    assert "Canberra" in str(responses["What is the capital of Australia?"])
    assert responses[FRANCE].source_nodes == []  # both retrieved passages about France were dropped
    assert responses["direct"].additional_kwargs["eco_guard"]["action"] == "corrupt"


@pytest.mark.fits
def test_example_fits_its_own_guard(tmp_path: Path) -> None:
    """Without --guard an example fits forget_france.yaml itself (fast: fixed strength):
    the guard it gets is that policy's (its target, its fixed strength, its audit log
    next to the policy copy), it flags the policy's question and passes another, and a
    second run reuses it instead of fitting again."""
    from eco_guard import Guard

    out = guard_dir(None, tmp_path)
    guard = Guard.load(out)  # no runner is loaded: checking needs only the classifier
    try:
        assert guard.target_ids == ["france"]
        assert guard.rule("france").action == "corrupt" and guard.rule("france").corruption.strength == 0.27
        assert guard.check(FRANCE).target == "france"
        assert not guard.check("How do I bake sourdough bread?").flagged
    finally:
        guard.close()
    audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [r["flagged"] for r in audit] == [True, False]
    fitted_at = (out / "guard.yaml").stat().st_mtime_ns
    assert guard_dir(None, tmp_path) == out and (out / "guard.yaml").stat().st_mtime_ns == fitted_at
