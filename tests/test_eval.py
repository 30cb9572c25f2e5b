"""Efficacy metrics and `eco-guard eval`: E1 recall rules, bad input, guard on vs off on the real model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eco_guard.cli import run
from eco_guard.answer_metrics import MCItem, contains_answer, distinct_ratio, normalize_answer, recall


def test_recall_is_normalised_containment() -> None:
    assert normalize_answer("  The Hague, NL! ") == "the hague nl"
    assert contains_answer("It was written by William Shakespeare.", "william shakespeare")
    assert contains_answer("Paris.", "PARIS")
    assert not contains_answer("It was written by Dickens.", "William Shakespeare")
    assert not contains_answer("anything", "  ")  # an empty gold answer never matches
    assert recall(["Paris is nice", "No idea"], ["Paris", "Rome"]) == 0.5


def test_distinct_ratio_catches_loops() -> None:
    assert distinct_ratio([1, 2, 3, 4]) == 1.0
    assert distinct_ratio([7] * 10) == 0.1
    assert distinct_ratio([]) == 0.0


def test_mc_prompt_letters() -> None:
    item = MCItem("Which is a fruit?", ("stone", "apple", "iron"), 1)
    assert item.letters == ["A", "B", "C"]
    assert "B. apple" in item.prompt()


def _files(tmp_path: Path, forget: str, retain: str, suffix: str = ".jsonl") -> tuple[Path, Path]:
    f, r = tmp_path / f"forget{suffix}", tmp_path / f"retain{suffix}"
    f.write_text(forget, encoding="utf-8")
    r.write_text(retain, encoding="utf-8")
    return f, r


@pytest.mark.parametrize(
    "forget, mc, needle",
    [
        ('{"question": "What is the capital of France?", "answer": "Paris"}\n{"question": \n', False, "line 2"),
        ('{"question": "What is the capital of France?"}\n', False, "'answer'"),
        ('{"question": "Q?", "choices": ["a", "b"], "answer": 5}\n', True, "line 1"),
        ('{"question": "Q?", "choices": "ab", "answer": 0}\n', True, "choices"),
    ],
)
def test_eval_bad_input_exits_2_naming_file_and_line(tmp_path: Path, capsys, forget: str, mc: bool, needle: str) -> None:
    good = '{"question": "Q?", "choices": ["a", "b"], "answer": 0}\n' if mc else '{"question": "What is 2+2?", "answer": "4"}\n'
    f, r = _files(tmp_path, forget, good)
    argv = ["eval", "--guard", str(tmp_path / "no-guard-needed"), "--forget", str(f), "--retain", str(r), "--out", str(tmp_path / "o")]
    code = run(argv + (["--mc"] if mc else []))
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert "forget.jsonl" in err and needle in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_eval_guard_on_and_off(tmp_path: Path, capsys, demo_guard_dir: Path) -> None:
    f, r = _files(
        tmp_path,
        '{"question": "What is the capital of France?", "answer": "Paris"}\n',
        '{"question": "What is the capital of Japan?", "answer": "Tokyo"}\n'
        '{"question": "What is the capital of Italy?", "answer": "Rome"}\n',
    )
    out_dir = tmp_path / "eval"
    code = run(["eval", "--guard", str(demo_guard_dir), "--forget", str(f), "--retain", str(r), "--out", str(out_dir), "--max-new-tokens", "12"])
    out, _ = capsys.readouterr()
    assert code == 0
    sets = json.loads(out)["sets"]
    forget, retain = sets["forget"], sets["retain"]
    assert forget["n_flagged"] == 1 and forget["recall_guard_off"] == 1.0 and forget["recall_guard_on"] == 0.0
    assert retain["n_flagged"] == 0
    assert retain["unflagged_identical"] == retain["n_unflagged"] == 2  # untouched, token for token
    assert forget["fluency_corrupted"] is not None and forget["distinct_corrupted"] > 0
    assert {p.name for p in out_dir.iterdir()} >= {"eval.json", "eval.md", "eval.png"}
    assert "| forget | 1 | 1 |" in (out_dir / "eval.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_eval_multiple_choice(tmp_path: Path, capsys, demo_guard_dir: Path) -> None:
    f, r = _files(
        tmp_path,
        '{"question": "What is the capital of France?", "choices": ["Lyon", "Paris", "Nice", "Lille"], "answer": 1}\n',
        '{"question": "What is the capital of Japan?", "choices": ["Osaka", "Kyoto", "Tokyo", "Nara"], "answer": 2}\n',
    )
    code = run(["eval", "--guard", str(demo_guard_dir), "--forget", str(f), "--retain", str(r), "--mc", "--out", str(tmp_path / "mc")])
    out, _ = capsys.readouterr()
    assert code == 0
    sets = json.loads(out)["sets"]
    assert sets["forget"]["n_flagged"] == 1 and sets["retain"]["n_flagged"] == 0
    assert sets["retain"]["accuracy_guard_on"] == sets["retain"]["accuracy_guard_off"]  # unflagged: unchanged
    assert sets["forget"]["chance"] == 0.25
