"""The in-process backend: the served guards behind two micro-batchers.

One batcher classifies (cheap, so a request's decision and audit line never wait behind a
long generation), one generates. Streams share the classifier batcher and then stream
from the guard directly, token by token. Every stage calls :class:`~eco_guard.guard.Guard`
(``decide_batch``, ``answer_decided_batch``, ``astream_decided``, ``prompt_tokens``,
``count_tokens``); none touches a runner.

Audit rule: a request's audit line is written in the classifier stage, as soon as its
decision exists and before any answer is produced, so a response can never reach a
client without its line already on disk (one ``os.write``: never torn).

Batches never mix guards (each row is decided and answered by the guard its request was
admitted to), and a generate batch never mixes decoding options.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from ..decision import Decision
from ..decision import DecidedAnswer
from ..runner.base import GenerationOptions
from .backend import Chat, Decided
from .batcher import MicroBatcher
from .config import ServerConfig
from .metrics import Metrics
from .registry import GuardEntry, GuardRegistry


@dataclass(frozen=True)
class _DecideRow:
    entry: GuardEntry
    chat: Chat
    kind: str
    key: str | None


@dataclass(frozen=True)
class _AnswerRow:
    entry: GuardEntry
    chat: Chat
    decision: Decision
    options: GenerationOptions


def decide_and_audit(entry: GuardEntry, chats: list[Chat], kinds: list[str], keys: list[str | None], **extra: Any) -> list[Decided]:
    """Decide chats with one guard and write each one's audit line (naming the guard, its
    version and the caller's key name); shared by this backend and the Ray replicas."""
    decisions = entry.guard.decide_batch(chats)
    for decision, chat, kind, key in zip(decisions, chats, kinds, keys):
        fields: dict[str, Any] = {"kind": kind, "guard": entry.name, "guard_version": entry.version, **extra}
        if key is not None:
            fields["key"] = key
        entry.guard.audit.record(decision, chat, **fields)
    return [Decided(d, entry.name, entry.version) for d in decisions]


def _decide(rows: list[_DecideRow]) -> list[Decided]:
    # one guard per batch (the batcher's key)
    return decide_and_audit(rows[0].entry, [r.chat for r in rows], [r.kind for r in rows], [r.key for r in rows])


def _answer(rows: list[_AnswerRow]) -> list[DecidedAnswer]:
    return rows[0].entry.guard.answer_decided_batch([r.chat for r in rows], [r.decision for r in rows], rows[0].options)


class GuardService:
    """The :class:`~eco_guard.server.backend.Backend` of ``eco-guard serve``."""

    def __init__(self, registry: GuardRegistry, config: ServerConfig, metrics: Metrics) -> None:
        self.registry = registry
        self.config = config
        self.metrics = metrics
        self._decider: MicroBatcher[_DecideRow, Decided] | None = None
        self._generator: MicroBatcher[_AnswerRow, DecidedAnswer] | None = None
        #: non-streaming requests accepted but not yet handed to the generate batcher
        self._classifying = 0
        self._reload_lock = asyncio.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Create the batchers on the running loop."""
        window = self.config.batch_window_ms / 1000.0
        self._decider = MicroBatcher(
            _decide,
            window_s=window,
            max_size=max(self.config.max_batch_size, 64),
            key=lambda row: id(row.entry),
            on_batch=lambda n: self.metrics.batch_size.labels(stage="classify").observe(n),
            name="eco-guard-classify",
        )
        self._generator = MicroBatcher(
            _answer,
            window_s=window,
            max_size=self.config.max_batch_size,
            key=lambda row: (id(row.entry), row.options),
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

    # ------------------------------------------------------------------ the Backend protocol

    def names(self) -> list[str]:
        return self.registry.names

    def pin(self, guard: str) -> GuardEntry | None:
        return self.registry.get(guard)

    def health(self) -> dict[str, Any]:
        return {
            e.name: {"version": e.version, "targets": e.guard.target_ids, "reload_error": self.registry.errors.get(e.name)}
            for e in self.registry.entries()
        }

    async def prompt_tokens(self, ticket: GuardEntry, chat: Chat, options: GenerationOptions) -> int:
        return ticket.guard.prompt_tokens(chat, options)

    async def decide(self, ticket: GuardEntry, chats: list[Chat], kind: str, key: str | None) -> list[Decided]:
        assert self._decider is not None, "service not started"
        answering = len(chats) if kind == "chat" else 0  # the generate batcher waits for these
        self._classifying += answering
        try:
            decided = await asyncio.gather(*(self._decider.submit(_DecideRow(ticket, chat, kind, key)) for chat in chats))
        finally:
            self._classifying -= answering
        for d in decided:
            self.metrics.observe_decision(d.decision.action, d.decision.target, guard=d.guard, key=key)
        return list(decided)

    async def answer(self, ticket: GuardEntry, chat: Chat, decided: Decided, options: GenerationOptions) -> DecidedAnswer:
        assert self._generator is not None, "service not started"
        if decided.decision.action == "refuse":  # no model: skip the batch
            return ticket.guard.answer_decided_batch([chat], [decided.decision], options)[0]
        return await self._generator.submit(_AnswerRow(ticket, chat, decided.decision, options))

    def stream(self, ticket: GuardEntry, chat: Chat, decided: Decided, options: GenerationOptions) -> AsyncIterator[str]:
        return ticket.guard.astream_decided(chat, decided.decision, options)

    async def count_tokens(self, ticket: GuardEntry, text: str) -> int:
        return ticket.guard.count_tokens(text)

    async def reload(self) -> dict[str, dict[str, Any]]:
        """Reload off the event loop (loading takes seconds); one reload at a time."""
        async with self._reload_lock:
            report = await asyncio.to_thread(self.registry.reload)
        for name, outcome in report.items():
            self.metrics.reloads.labels(guard=name, outcome=outcome["status"]).inc()
            self.metrics.reload_failing.labels(guard=name).set(1 if outcome["status"] == "failed" else 0)
        return report
