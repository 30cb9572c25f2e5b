"""What the guard decided about one request, and the answer it produced.

A ``Decision`` is returned for every request, passed ones included, with the real
score and threshold: a log full of zeros for passed traffic is useless for tuning a
threshold or answering an auditor.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Action = Literal["pass", "corrupt", "refuse", "flag"]


@dataclass(frozen=True)
class Decision:
    """The guard's verdict on one request."""

    request_id: str
    flagged: bool
    action: Action
    target: str | None
    score: float
    threshold: float
    latency_ms: float
    scores: dict[str, float] = field(default_factory=dict)
    corruption: dict[str, Any] | None = None
    error: str | None = None
    stage: Literal["input", "output"] | None = None
    """Which stage caught the request: the prompt (input), the answer (output), or none."""
    output_score: float | None = None
    """The output stage's score of the answer (None when no answer was checked)."""
    output_threshold: float | None = None
    language: str | None = None
    """The prompt's language (ISO 639-1), when the guard has a language policy."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GuardedResult:
    """A guarded answer: the text the caller should see, and why."""

    text: str
    decision: Decision

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "decision": self.decision.to_dict()}
