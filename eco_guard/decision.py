"""What the guard decided about one request, and the answer it produced.

A ``Decision`` is returned for every request, passed ones included, with the real
score and threshold: a log full of zeros for passed traffic is useless for tuning a
threshold or answering an auditor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from .corruption import Corruption

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
    corruption: Corruption | None = None
    """The request's own (seeded) corruption when the action is ``corrupt``: what the
    runner applies, kept typed so that answering needs no parsing."""
    scope: str | None = None
    """Which prompt tokens ``corruption`` touches (the target's mask scope)."""
    error: str | None = None
    stage: Literal["input", "output"] | None = None
    """Which stage caught the request: the prompt (input), the answer (output), or none."""
    output_score: float | None = None
    """The output stage's score of the answer (None when no answer was checked)."""
    output_threshold: float | None = None
    language: str | None = None
    """The prompt's language (ISO 639-1), when the guard has a language policy."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (audit lines, CLI output, server responses); the corruption
        record carries its scope: ``{"method", "dims", "strength", "seed", "scope"}``."""
        return {
            "request_id": self.request_id,
            "flagged": self.flagged,
            "action": self.action,
            "target": self.target,
            "score": self.score,
            "threshold": self.threshold,
            "latency_ms": self.latency_ms,
            "scores": dict(self.scores),
            "corruption": None if self.corruption is None else {**self.corruption.to_dict(), "scope": self.scope},
            "error": self.error,
            "stage": self.stage,
            "output_score": self.output_score,
            "output_threshold": self.output_threshold,
            "language": self.language,
        }


@dataclass(frozen=True)
class GuardedResult:
    """A guarded answer: the text the caller should see, and why."""

    text: str
    decision: Decision

    def to_dict(self) -> dict[str, Any]:
        return {"text": self.text, "decision": self.decision.to_dict()}


@dataclass(frozen=True)
class DecidedAnswer:
    """One answer of a decided request, with its exact new-token count.

    ``completion_tokens`` is None only inside the guard, for a refusal not yet counted
    (counting needs the tokenizer, and a refusal should not load the model).
    ``decision`` is the final decision: the one the answer was asked with, or the output
    stage's when it caught the answer (then ``stage == "output"``).
    """

    text: str
    completion_tokens: int | None
    decision: Decision | None = None
