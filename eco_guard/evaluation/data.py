"""Evaluation inputs: free-form probes and multiple-choice items, read with the shared readers.

Free-form rows go through :func:`eco_guard.examples.read_text_rows` and MC rows through
:func:`eco_guard.jsonl_inputs.read_jsonl_inputs`, so a bad line fails here exactly as it would in
``fit`` or ``generate``: exit 2, naming the file and the line.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import InputError
from ..examples import read_text_rows
from ..jsonl_inputs import read_jsonl_inputs
from .evaluate import QARow
from ..answer_metrics import LETTERS, MCItem


def read_qa_rows(path: Path, *, field: str = "question", answer_field: str | None = "answer") -> list[QARow]:
    """Probes from a .jsonl/.json/.csv/.txt file.

    With ``answer_field=None`` (or a .txt file) there are no gold answers: recall is then
    n/a and the evaluation reports flags, identity and fluency only.
    """
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    examples = read_text_rows(path, field=field, answer_field=answer_field if path.suffix.lower() != ".txt" else None)
    if not examples:
        raise InputError(f"{path}: no rows")
    return [QARow(i, e.text, e.answer) for i, e in enumerate(examples, start=1)]


def read_mc_rows(path: Path, *, field: str = "question") -> list[MCItem]:
    """MC items from JSONL: ``{"question": str, "choices": [str, ...], "answer": int}`` per line."""
    rows = read_jsonl_inputs(path, field)
    lines = path.read_text(encoding="utf-8").split("\n")
    items: list[MCItem] = []
    for n, (_, question) in enumerate(rows, start=1):
        obj = json.loads(lines[n - 1])
        where = f"{path}, line {n}"
        choices, answer = obj.get("choices") if isinstance(obj, dict) else None, obj.get("answer") if isinstance(obj, dict) else None
        if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS) or not all(isinstance(c, str) and c.strip() for c in choices):
            raise InputError(f"{where}: 'choices' must be a list of 2-{len(LETTERS)} non-empty strings")
        if not isinstance(answer, int) or isinstance(answer, bool) or not 0 <= answer < len(choices):
            raise InputError(f"{where}: 'answer' must be the index (0-{len(choices) - 1}) of the right choice")
        items.append(MCItem(question, tuple(choices), answer))
    return items

