"""The guard behind the HTTP layer: validate, decide (batched), audit, generate (batched).

Two micro-batchers run side by side: one classifies (cheap, so a request's decision and
audit line never wait behind a long generation), one generates. Streams share the
classifier batcher and then stream from the runner directly, token by token.

Audit rule: a request's audit line is written in the classifier stage, as soon as its
decision exists and before any answer is produced, so a response can never reach a
client without its line already on disk (one ``os.write``: never torn).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

from ..corruption import Corruption
from ..decision import Decision
from ..errors import InputError
from ..guard import Guard
from ..runner.base import GenerationOptions, MaskSpec, Runner, normalize_messages
from .batcher import MicroBatcher
from .config import ServerConfig
from .metrics import Metrics

Chat = list[dict[str, str]]


@dataclass(frozen=True)
class ChatJob:
    """A validated chat request, ready for the guard."""

    chat: Chat
    options: GenerationOptions
    prompt_tokens: int


@dataclass(frozen=True)
class Answer:
    text: str
    completion_tokens: int
    decision: Decision


@dataclass(frozen=True)
class _GenRow:
    chat: Chat
    corruption: Corruption | None
    mask: MaskSpec
    options: GenerationOptions


def count_tokens(runner: Runner, text: str) -> int:
    """Tokens in ``text`` by the runner's tokenizer (a word count for runners without one)."""
    tokenizer = getattr(runner, "tokenizer", None)
    if tokenizer is None:
        return len(text.split())
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def generate_rows(runner: Runner, rows: Sequence[_GenRow]) -> list[tuple[str, int]]:
    """One batched generate, each row with its own corruption; ``(text, new tokens)`` per row.

    Uses the runner's token ids when it exposes them, so token counts (usage, metrics,
    benchmarks) are exact rather than re-tokenised.
    """
    chats = [r.chat for r in rows]
    corruptions = [r.corruption for r in rows]
    masks = [r.mask for r in rows]
    options = rows[0].options
    generate_ids = getattr(runner, "generate_ids", None)
    tokenizer = getattr(runner, "tokenizer", None)
    if generate_ids is not None and tokenizer is not None:
        ids = generate_ids(chats, corruptions, masks, options)
        return [(tokenizer.decode(row, skip_special_tokens=True), len(row)) for row in ids]
    texts = runner.generate(chats, corruptions, masks, options)
    return [(t, count_tokens(runner, t)) for t in texts]


class GuardService:
    """Owns the batchers; one per app, started and drained by the app's lifespan."""

    def __init__(self, guard: Guard, config: ServerConfig, metrics: Metrics) -> None:
        self.guard = guard
        self.config = config
        self.metrics = metrics
        self._decider: MicroBatcher[tuple[Chat, str], Decision] | None = None
        self._generator: MicroBatcher[_GenRow, tuple[str, int]] | None = None
        #: non-streaming requests accepted but not yet handed to the generate batcher
        self._classifying = 0

    @property
    def runner(self) -> Runner:
        return self.guard.runner

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Create the batchers on the running loop."""
        window = self.config.batch_window_ms / 1000.0
        self._decider = MicroBatcher(
            self._decide,
            window_s=window,
            max_size=max(self.config.max_batch_size, 64),
            on_batch=lambda n: self.metrics.batch_size.labels(stage="classify").observe(n),
            name="eco-guard-classify",
        )
        self._generator = MicroBatcher(
            lambda rows: generate_rows(self.runner, rows),
            window_s=window,
            max_size=self.config.max_batch_size,
            key=lambda row: row.options,
            on_batch=lambda n: self.metrics.batch_size.labels(stage="generate").observe(n),
            incoming=lambda: self._classifying,
            name="eco-guard-generate",
        )
        self._decider.start()
        self._generator.start()

    async def drain(self) -> None:
        """Finish queued work (decisions first, since generations may follow them)."""
        if self._decider is not None:
            await self._decider.close()
        if self._generator is not None:
            await self._generator.close()

    # ------------------------------------------------------------------ stages

    def _decide(self, items: list[tuple[Chat, str]]) -> list[Decision]:
        decisions = self.guard.decide_batch([chat for chat, _ in items])
        for decision, (chat, kind) in zip(decisions, items):
            self.guard.audit.record(decision, chat, kind=kind)
        return decisions

    def validate_chat(self, messages: Any, *, max_tokens: int | None, temperature: float | None, top_p: float | None, ignore_eos: bool) -> ChatJob:
        """Everything that can be wrong with a request, found before it joins a batch."""
        chat = normalize_messages(messages)
        options = GenerationOptions(
            max_new_tokens=max_tokens or self.config.default_max_tokens,
            temperature=float(temperature or 0.0),
            top_p=float(top_p if top_p is not None else 1.0),
            ignore_eos=ignore_eos,
        )
        prepare = getattr(self.runner, "prepare", None)
        prompt_tokens = len(prepare(chat).input_ids) if prepare is not None else 0
        limit = self.runner.max_context
        if prompt_tokens + options.max_new_tokens > limit:
            raise InputError(
                f"messages: the prompt is {prompt_tokens} tokens and {options.max_new_tokens} new tokens were asked for, "
                f"but the model's context is {limit} tokens; shorten the prompt or lower max_tokens"
            )
        return ChatJob(chat, options, prompt_tokens)

    async def decide(self, chat: Chat, kind: str) -> Decision:
        assert self._decider is not None, "service not started"
        decision = await self._decider.submit((chat, kind))
        self.metrics.observe_decision(decision.action, decision.target)
        return decision

    async def complete(self, job: ChatJob) -> Answer:
        """Decide, then answer through the generate batcher (or with the refusal text)."""
        assert self._generator is not None, "service not started"
        self._classifying += 1
        try:
            decision = await self.decide(job.chat, "chat")
        finally:
            self._classifying -= 1
        corruption, mask, refusal = self.guard.route(decision)
        if refusal is not None:
            return Answer(refusal, count_tokens(self.runner, refusal), decision)
        text, n_tokens = await self._generator.submit(_GenRow(job.chat, corruption, mask, job.options))
        # The output stage: an answer revealing a target is replaced before it leaves the server.
        final = await self.guard.ascreen_answer(job.chat, decision, text, job.options)
        if final.text != text:
            return Answer(final.text, count_tokens(self.runner, final.text), final.decision)
        return Answer(text, n_tokens, final.decision)

    async def stream(self, job: ChatJob) -> tuple[Decision, AsyncIterator[str]]:
        """Decide, then stream the answer piece by piece (bypassing the generate batcher)."""
        decision = await self.decide(job.chat, "stream")
        return decision, self.guard.astream_decided(job.chat, decision, job.options)

    async def check(self, chats: list[Chat]) -> list[Decision]:
        """Decisions only; all inputs of the request join the classifier batch together."""
        decisions = await asyncio.gather(*(self.decide(chat, "check") for chat in chats))
        return list(decisions)
