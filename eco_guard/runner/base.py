"""The Runner protocol: what the guard needs from a local model.

The guard only ever talks to this protocol, so a different backend (a GPU server fed
with ``prompt_embeds``, say) can replace the transformers runner without touching the
guard, the CLI or the integrations.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from ..corruption import Corruption
from ..errors import InputError

Message = Mapping[str, str]
Messages = Sequence[Message]
ROLES = ("system", "user", "assistant")


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

    def __post_init__(self) -> None:
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not 0.0 <= float(self.temperature) <= 5.0:
            raise InputError(f"temperature must be between 0 and 5, got {self.temperature!r}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise InputError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not isinstance(self.corrupted_no_repeat_ngram, int) or self.corrupted_no_repeat_ngram < 0:
            raise InputError(f"corrupted_no_repeat_ngram must be a non-negative integer, got {self.corrupted_no_repeat_ngram!r}")


def normalize_messages(messages: str | Messages, *, where: str = "messages") -> list[dict[str, str]]:
    """Validate a chat and return plain dicts; a bare string becomes one user turn.

    Every public entry point funnels through here so that the CLI, the Python API and
    the server reject the same bad input with the same message.
    """
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or isinstance(messages, (bytes, bytearray)):
        raise InputError(f"{where}: expected a string or a list of {{role, content}} messages")
    if len(messages) == 0:
        raise InputError(f"{where}: the conversation is empty")
    out: list[dict[str, str]] = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, Mapping):
            raise InputError(f"{where}[{i}]: expected a mapping with 'role' and 'content'")
        role, content = msg.get("role"), msg.get("content")
        if role not in ROLES:
            raise InputError(f"{where}[{i}].role: expected one of {', '.join(ROLES)}; got {role!r}")
        if not isinstance(content, str):
            raise InputError(f"{where}[{i}].content: expected a string; got {type(content).__name__}")
        out.append({"role": str(role), "content": content})
    if not any(m["role"] == "user" and m["content"].strip() for m in out):
        raise InputError(f"{where}: there is no non-empty user message")
    return out


@runtime_checkable
class Runner(Protocol):
    """A local model that can answer with per-row embedding corruption."""

    name: str
    max_context: int

    def generate(
        self,
        messages_batch: Sequence[Messages],
        corruption: Corruption | None | Sequence[Corruption | None] = None,
        mask_spec: MaskSpec | Sequence[MaskSpec] = MaskSpec(),
        options: GenerationOptions = GenerationOptions(),
    ) -> list[str]: ...

    def stream(
        self,
        messages: Messages,
        corruption: Corruption | None = None,
        mask_spec: MaskSpec = MaskSpec(),
        options: GenerationOptions = GenerationOptions(),
    ) -> Iterator[str]: ...

    def score_choices(
        self,
        messages: Messages,
        choices: Sequence[str],
        corruption: Corruption | None = None,
        mask_spec: MaskSpec = MaskSpec(),
        reduction: Literal["sum", "mean"] = "sum",
    ) -> list[float]: ...

    async def agenerate(
        self,
        messages_batch: Sequence[Messages],
        corruption: Corruption | None | Sequence[Corruption | None] = None,
        mask_spec: MaskSpec | Sequence[MaskSpec] = MaskSpec(),
        options: GenerationOptions = GenerationOptions(),
    ) -> list[str]: ...

    def astream(
        self,
        messages: Messages,
        corruption: Corruption | None = None,
        mask_spec: MaskSpec = MaskSpec(),
        options: GenerationOptions = GenerationOptions(),
    ) -> AsyncIterator[str]: ...

    async def ascore_choices(
        self,
        messages: Messages,
        choices: Sequence[str],
        corruption: Corruption | None = None,
        mask_spec: MaskSpec = MaskSpec(),
        reduction: Literal["sum", "mean"] = "sum",
    ) -> list[float]: ...
