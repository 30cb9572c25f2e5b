"""The integration examples run end to end on the bundled models (imported, then main())."""

from __future__ import annotations

import importlib
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


def test_example_fits_its_own_guard(tmp_path: Path) -> None:
    """Without --guard an example fits forget_france.yaml itself (fast: fixed strength)."""
    out = guard_dir(None, tmp_path)
    assert (out / "guard.yaml").is_file() and (tmp_path / "forget_france.yaml").is_file()
