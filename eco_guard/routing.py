"""What a decision means for answering: each target's rule, and the route a request takes.

Kept apart from :mod:`eco_guard.guard` so that the fitted-guard directory
(:mod:`eco_guard.artifact`) can build rules without importing the guard that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .corruption import Corruption
from .runner.base import GenerationRow, MaskSpec, Messages


@dataclass(frozen=True)
class TargetRule:
    """What to do when a target is flagged, with its fitted corruption."""

    id: str
    action: Literal["corrupt", "refuse", "flag"]
    corruption: Corruption
    mask: MaskSpec
    refusal: str


@dataclass(frozen=True)
class Route:
    """How a decided request is answered.

    ``refusal`` set: answer with that text and do not generate. Otherwise generate, with
    ``corruption`` applied to the tokens ``mask`` selects (no corruption: the bare model).
    """

    corruption: Corruption | None = None
    mask: MaskSpec = MaskSpec()
    refusal: str | None = None

    @property
    def generates(self) -> bool:
        """Whether the local model is asked at all (a refusal is answered without it)."""
        return self.refusal is None

    def row(self, messages: str | Messages) -> GenerationRow:
        """The generation row that answers ``messages`` along this route."""
        return GenerationRow(messages, self.corruption, self.mask)


PLAIN = Route()
"""The route of a passed (or shadow-flagged) request: the bare model, untouched."""
