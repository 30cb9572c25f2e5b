"""The Runner protocol: what the guard needs from a local model, one typed row at a time.

The guard only ever talks to this protocol, so a different backend (a GPU server fed
with ``prompt_embeds``, say) can replace the transformers runner without touching the
guard, the CLI or the integrations. The parts every backend needs (templating,
masking, building and corrupting the embedding rows, the loop guard) are shared in
``templating.py``, ``masking.py``, ``embedding_rows.py``, ``loop_guard.py`` and
``embedding_runner.py``; a backend adds only embedding lookup, generate and stream.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from ..corruption import Corruption
from ..errors import InputError
from .messages import ROLES, Message, Messages, normalize_messages

__all__ = [
    "ROLES",
    "MIN_DISTINCT",
    "GenerationOptions",
    "GenerationRow",
    "MaskSpec",
    "Message",
    "Messages",
    "Runner",
    "bare_rows",
    "normalize_messages",
]


@dataclass(frozen=True)
class MaskSpec:
    """Which prompt tokens a corruption touches.

    ``prompt`` (the default) corrupts the content of the user turns only, so the chat
    template's system text and role markers stay intact and the model still answers in
    form. ``entities`` corrupts only the names inside user turns, as the paper did on
    TOFU: occurrences of ``terms`` plus the names and titles found in the prompt itself
    (:mod:`eco_guard.entities`), since users name a target in ways its examples did not;
    when there is none it falls back to ``prompt`` (fail closed).
    ``all`` corrupts every templated token.
    """

    scope: Literal["prompt", "entities", "all"] = "prompt"
    terms: tuple[str, ...] = field(default=())


#: distinct-token ratio below which an answer counts as looping (the "no loops" bar of
#: the evaluation, ``answer_metrics.py``); corrupted rows decode above it by default
MIN_DISTINCT = 0.5


@dataclass(frozen=True)
class GenerationOptions:
    """Decoding settings; greedy by default so answers are reproducible."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    #: generate exactly ``max_new_tokens`` (benchmarks compare equal amounts of work)
    ignore_eos: bool = False
    #: rows with a corruption never repeat an n-gram of this size (0: off); rows without
    #: one decode exactly as the bare model. See ``runner/loop_guard.py`` for why and
    #: for the measurements behind 2
    corrupted_no_repeat_ngram: int = 2
    #: rows with a corruption never let their distinct-token ratio fall below this (0: off):
    #: once it would, a token the answer already used is banned. Catches loops the n-gram
    #: rule cannot, in tokenizers that split numbers into digits (``runner/loop_guard.py``)
    corrupted_min_distinct: float = MIN_DISTINCT

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not 0.0 <= float(self.temperature) <= 5.0:
            raise InputError(f"temperature must be between 0 and 5, got {self.temperature!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.corrupted_no_repeat_ngram, int) or self.corrupted_no_repeat_ngram < 0:
            raise InputError(f"corrupted_no_repeat_ngram must be a non-negative integer, got {self.corrupted_no_repeat_ngram!r}")
        if isinstance(self.corrupted_min_distinct, bool) or not isinstance(self.corrupted_min_distinct, (int, float)) or not 0.0 <= self.corrupted_min_distinct < 1.0:
            raise InputError(f"corrupted_min_distinct must be a number in [0, 1), got {self.corrupted_min_distinct!r}")


@dataclass(frozen=True)
class GenerationRow:
    """One prompt of a batch with its own corruption (``None``: the bare model) and mask.

    The corruption carries its seed, so a row's noise depends on the row alone and
    never on what it is batched with.
    """

    messages: str | Messages
    corruption: Corruption | None = None
    mask: MaskSpec = MaskSpec()


def bare_rows(chats: Sequence[str | Messages]) -> list[GenerationRow]:
    """Rows that the bare model answers (no corruption), one per chat."""
    return [GenerationRow(chat) for chat in chats]


@runtime_checkable
class Runner(Protocol):
    """A local model that can answer with per-row embedding corruption."""

    name: str
    max_context: int

    def generate(self, rows: Sequence[GenerationRow], options: GenerationOptions = GenerationOptions()) -> list[str]: ...

    def generate_counted(
        self, rows: Sequence[GenerationRow], options: GenerationOptions = GenerationOptions()
    ) -> list[tuple[str, int]]:
        """:meth:`generate` with each answer's number of new tokens (usage figures, exact)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` alone, by the model's tokenizer."""
        ...

    def prompt_tokens(self, messages: Messages) -> int:
        """Tokens of ``messages`` once templated: what the model's context must hold."""
        ...

    def stream(self, row: GenerationRow, options: GenerationOptions = GenerationOptions()) -> Iterator[str]: ...

    def score_choices(
        self, row: GenerationRow, choices: Sequence[str], reduction: Literal["sum", "mean"] = "sum"
    ) -> list[float]: ...

    def embedding_stats(self) -> tuple[float, int]:
        """Std and width of the embeddings the model consumes (after any scale it applies)."""
        ...

    async def agenerate(
        self, rows: Sequence[GenerationRow], options: GenerationOptions = GenerationOptions()
    ) -> list[str]: ...

    def astream(self, row: GenerationRow, options: GenerationOptions = GenerationOptions()) -> AsyncIterator[str]: ...

    async def ascore_choices(
        self, row: GenerationRow, choices: Sequence[str], reduction: Literal["sum", "mean"] = "sum"
    ) -> list[float]: ...
