"""Reading a JSONL file of input texts, for the CLI's batch commands and ``eco-guard eval``.

Its own module because two callers need it (:mod:`eco_guard.cli` and
:mod:`eco_guard.evaluation.data`): in the CLI it made the evaluation package import the CLI
back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InputError


def read_jsonl_inputs(path: Path, field: str) -> list[tuple[Any, str]]:
    """Read ``(id, text)`` pairs from a JSONL file, validating every line first.

    The whole file is checked before any work starts, so a bad line 9,000 never costs an
    hour of generation, and nothing is written for a file that is not usable.
    """
    if not path.is_file():
        raise InputError(f"{path}: input file not found")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(f"{path}, line {line}: not valid UTF-8 (byte offset {exc.start}); re-encode the file as UTF-8") from exc
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    if not lines:
        raise InputError(f"{path}: the input file is empty")
    rows: list[tuple[Any, str]] = []
    for n, line in enumerate(lines, start=1):
        where = f"{path}, line {n}"
        if not line.strip():
            raise InputError(f"{where}: empty line; every line must be a JSON object with a {field!r} field")
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not valid JSON ({exc.msg} at column {exc.colno})") from exc
        if isinstance(obj, str):
            value: Any = obj
            row_id: Any = n
        elif isinstance(obj, dict):
            if field not in obj:
                raise InputError(f"{where}: missing field {field!r} (use --field to name another)")
            value = obj[field]
            row_id = obj.get("id", n)
        else:
            raise InputError(f"{where}: expected a JSON object or string, got {type(obj).__name__}")
        if not isinstance(value, str):
            raise InputError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise InputError(f"{where}: field {field!r} is empty")
        rows.append((row_id, value))
    return rows
