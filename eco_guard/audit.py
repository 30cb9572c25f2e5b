"""Append-only JSONL audit log of every guard decision.

Durability rules, because compliance teams read this file:
- one record is one ``os.write`` of one complete line on an ``O_APPEND`` descriptor, so
  a killed process leaves either the whole line or nothing, never a torn one, and
  concurrent writers (threads or worker processes) never interleave inside a line;
- the write happens before the guarded answer is returned to the caller.
Prompts are stored as configured: not at all, as a SHA-256 of the conversation, or in full.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from .decision import Decision

PromptMode = Literal["none", "hash", "full"]


def prompt_hash(messages: Sequence[dict[str, str]]) -> str:
    """Stable SHA-256 of a conversation, so repeated prompts can be correlated without storing them."""
    blob = json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(blob.encode("utf-8")).hexdigest()


class AuditSink(Protocol):
    """Where audit records go; the guard needs nothing more than this."""

    def record(self, decision: Decision, messages: Sequence[dict[str, str]], **extra: Any) -> None: ...

    def close(self) -> None: ...


class NullAudit:
    """Audit disabled (``audit.path`` unset)."""

    def record(self, decision: Decision, messages: Sequence[dict[str, str]], **extra: Any) -> None:
        return None

    def close(self) -> None:
        return None


class JsonlAudit:
    """Thread- and process-safe JSONL audit file."""

    def __init__(self, path: Path, prompts: PromptMode = "hash", *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.prompts = prompts
        self.fsync = fsync
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._lock = threading.Lock()

    def record(self, decision: Decision, messages: Sequence[dict[str, str]], **extra: Any) -> None:
        rec: dict[str, Any] = {"ts": round(time.time(), 6), **decision.to_dict()}
        if self.prompts == "hash":
            rec["prompt_sha256"] = prompt_hash(messages)
        elif self.prompts == "full":
            rec["messages"] = [dict(m) for m in messages]
        rec.update(extra)
        line = (json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
        with self._lock:
            view = memoryview(line)
            while view:  # a regular file takes it all at once; loop only for exotic filesystems
                written = os.write(self._fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1
