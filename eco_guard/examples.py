"""Read the example prompts a policy names (forget and retain sets) or the CLI is given.

Example files come from many places (TOFU dumps, spreadsheets, hand-written lists), so
several formats are accepted; but a bad row is always an error naming the file and the
line, never silently dropped, because a quietly shrunken forget set means a guard that
quietly misses what it was meant to block.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, PolicyError, UserError
from .policy import ExampleSource, LoadedPolicy

__all__ = ["SUPPORTED_SUFFIXES", "Example", "load_examples", "read_text_rows"]

SUPPORTED_SUFFIXES = (".txt", ".jsonl", ".json", ".csv")


@dataclass(frozen=True)
class Example:
    """One example prompt, with its gold answer when the source names an ``answer_field``."""

    text: str
    answer: str | None = None
    group: str | None = None
    """The row's group when the source names a ``group_field`` (retain examples: see docs/topic-policies.md)."""


def load_examples(
    source: ExampleSource, *, loaded: LoadedPolicy, key: str, required: bool = True
) -> list[Example]:
    """The examples of ``source`` (the policy key ``key``, e.g. ``targets[0].forget``).

    ``required`` makes an empty set an error: a target with nothing to forget cannot be
    fitted, and failing at load time beats a guard that flags nothing.
    """
    policy_file = str(loaded.path)
    if source.file is not None:
        path = loaded.resolve(source.file)
        examples = read_text_rows(
            path, field=source.field, answer_field=source.answer_field, key=key, policy_file=policy_file,
            group_field=source.group_field,
        )
        origin = f"{path} contains no examples"
    else:
        examples = []
        for index, text in enumerate(source.examples or ()):
            if not text.strip():
                where = f"{key}.examples[{index}]"
                raise PolicyError("example is empty or whitespace only", file=policy_file, key=where)
            examples.append(Example(text.strip()))
        origin = "'examples' is an empty list"
    if required and not examples:
        name = key.rsplit(".", 1)[-1]
        raise PolicyError(f"the {name} set is empty: {origin}", file=policy_file, key=key)
    return examples


def read_text_rows(
    path: Path,
    *,
    field: str,
    answer_field: str | None = None,
    key: str | None = None,
    policy_file: str | None = None,
    group_field: str | None = None,
) -> list[Example]:
    """Read examples from a .txt, .jsonl, .json or .csv file.

    ``field`` names the text column/key (ignored for .txt). Errors name the file and the
    line; they are PolicyErrors pointing at ``key`` in ``policy_file`` when the file was
    named by a policy, and InputErrors otherwise (an input file given to the CLI).
    """
    reader = _RowReader(path=path, field=field, answer_field=answer_field, key=key, policy_file=policy_file, group_field=group_field)
    return reader.read()


@dataclass(frozen=True)
class _RowReader:
    """One file being read; holds what every error message needs to say where it is."""

    path: Path
    field: str
    answer_field: str | None
    key: str | None
    policy_file: str | None
    group_field: str | None = None

    def read(self) -> list[Example]:
        """Dispatch on the extension: the format is the author's explicit choice, never sniffed."""
        suffix = self.path.suffix.lower()
        if suffix not in SUPPORTED_SUFFIXES:
            raise self._error(
                f"unsupported example file type {self.path.suffix or '(no extension)'!r} for {self.path}; "
                f"supported: {', '.join(SUPPORTED_SUFFIXES)}",
                at="file",
            )
        text = self._read_text()
        if suffix == ".txt":
            if self.answer_field is not None:
                raise self._error(
                    f"answer_field {self.answer_field!r} is set but {self.path} is a .txt file, which has no "
                    "fields; use .jsonl, .json or .csv for examples with answers",
                    at="answer_field",
                )
            if self.group_field is not None:
                raise self._error(
                    f"group_field {self.group_field!r} is set but {self.path} is a .txt file, which has no "
                    "fields; use .jsonl, .json or .csv for grouped examples",
                    at="group_field",
                )
            return [Example(line.strip()) for line in text.splitlines() if line.strip()]
        if suffix == ".jsonl":
            return [self._example(row, where) for where, row in self._jsonl_rows(text)]
        if suffix == ".json":
            return [self._example(row, where) for where, row in self._json_rows(text)]
        return self._csv_examples(text)

    def _read_text(self) -> str:
        """The file decoded as UTF-8 (a BOM is tolerated: spreadsheet exports add one)."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            raise self._error(f"{self._role} file {self.path} does not exist", at="file") from None
        except IsADirectoryError:
            raise self._error(f"{self._role} file {self.path} is a directory, expected a file", at="file") from None
        except OSError as exc:
            raise self._error(f"cannot read {self._role} file {self.path}: {exc.strerror}", at="file") from None
        try:
            return raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = raw[: exc.start].count(b"\n") + 1
            raise self._error(
                f"{self.path}, line {line}: not valid UTF-8 (byte 0x{raw[exc.start]:02x} at byte offset {exc.start}); "
                "save the file as UTF-8"
            ) from None

    def _jsonl_rows(self, text: str) -> Iterable[tuple[str, object]]:
        """One JSON value per non-blank line."""
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                yield f"line {number}", self._parse_json(line, f"line {number}")

    def _json_rows(self, text: str) -> Iterable[tuple[str, object]]:
        """A JSON array of rows, or (the TOFU layout) several arrays/objects, one per line."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as whole_error:
            lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
            if not lines or not _is_json(lines[0][1]):
                # Not a one-value-per-line file either: the whole-file position is the useful one.
                raise self._error(
                    f"{self.path}, line {whole_error.lineno}, column {whole_error.colno}: "
                    f"invalid JSON ({whole_error.msg})"
                ) from None
            for number, line in lines:
                value = self._parse_json(line, f"line {number}")
                if isinstance(value, list):
                    yield from ((f"line {number}, item [{index}]", row) for index, row in enumerate(value))
                elif isinstance(value, dict):
                    yield f"line {number}", value
                else:
                    raise self._error(
                        f"{self.path}, line {number}: expected a JSON array or object; got {_kind(value)}"
                    )
            return
        if not isinstance(data, list):
            raise self._error(f"{self.path}: expected a JSON array of objects or strings; got {_kind(data)}")
        yield from ((f"item [{index}]", row) for index, row in enumerate(data))

    def _csv_examples(self, text: str) -> list[Example]:
        """Rows of a CSV file with a header row; ``field`` names a column."""
        rows = csv.DictReader(io.StringIO(text, newline=""), restval="")  # short row: empty-field error
        examples = []
        try:
            columns = rows.fieldnames or []
            for name in (self.field, self.answer_field, self.group_field):
                if columns and name is not None and name not in columns:
                    raise self._error(
                        f"{self.path}, line 1: no column {name!r} in the header (columns: {', '.join(columns)})"
                    )
            for row in rows:
                examples.append(self._example(row, f"line {rows.line_num}"))
        except csv.Error as exc:
            raise self._error(f"{self.path}, line {rows.line_num}: malformed CSV ({exc})") from None
        return examples

    def _parse_json(self, line: str, where: str) -> object:
        """Parse one line, reporting the line (and column) a JSON error is on."""
        try:
            return json.loads(line)
        except json.JSONDecodeError as exc:
            raise self._error(f"{self.path}, {where}, column {exc.colno}: invalid JSON ({exc.msg})") from None

    def _example(self, row: object, where: str) -> Example:
        """Turn one parsed row (an object, or a bare string) into an Example, or say why not."""
        if isinstance(row, str):
            for kind, name in (("answer", self.answer_field), ("group", self.group_field)):
                if name is not None:
                    raise self._error(f"{self.path}, {where}: row is a plain string, so it has no {kind} field {name!r}")
            return Example(self._text(row, where, "text"))
        if not isinstance(row, dict):
            raise self._error(f"{self.path}, {where}: expected an object with key {self.field!r}; got {_kind(row)}")
        text = self._text(self._value(row, self.field, where), where, self.field)
        answer = None if self.answer_field is None else self._text(self._value(row, self.answer_field, where), where, self.answer_field)
        group = None if self.group_field is None else self._text(self._value(row, self.group_field, where), where, self.group_field)
        return Example(text, answer, group)

    def _value(self, row: dict[object, object], name: str, where: str) -> object:
        """``row[name]``; a missing field lists the fields present, as the likely fix is a rename."""
        if name not in row:
            present = ", ".join(str(k) for k in row if k is not None)
            raise self._error(f"{self.path}, {where}: missing field {name!r} (fields present: {present or 'none'})")
        return row[name]

    def _text(self, value: object, where: str, name: str) -> str:
        """A non-empty string, stripped; numbers and blanks are data bugs, not examples."""
        if not isinstance(value, str):
            raise self._error(f"{self.path}, {where}: field {name!r} must be a string; got {_kind(value)}")
        if not value.strip():
            raise self._error(f"{self.path}, {where}: field {name!r} is empty or whitespace only")
        return value.strip()

    @property
    def _role(self) -> str:
        """What the file is to the user, for messages: named by a policy, or given to the CLI."""
        return "example" if self.policy_file is not None else "input"

    def _error(self, message: str, *, at: str | None = None) -> UserError:
        """A PolicyError pointing into the policy, or an InputError for a standalone input file.

        ``at`` narrows the policy key to one of the source's own keys (``file`` for
        problems with the path itself) instead of the source as a whole.
        """
        if self.policy_file is None:
            return InputError(message)
        key = f"{self.key}.{at}" if at and self.key else self.key
        return PolicyError(message, file=self.policy_file, key=key)


def _is_json(text: str) -> bool:
    """Whether ``text`` alone is a JSON value (tells the one-array-per-line layout apart)."""
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def _kind(value: object) -> str:
    """A short description of a JSON value for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"number {value}"
    if isinstance(value, str):
        return f"string {value[:60]!r}"
    return "an array" if isinstance(value, list) else "an object"
