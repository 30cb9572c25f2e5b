"""The output stage on every path an answer takes: check it, and replace it when it reveals a target.

A request that passed the input stage is answered by a model (the local runner, or the
chain's downstream model). Before the caller sees the answer, the answer classifier
(:mod:`eco_guard.output.answers`) checks it. An answer that reveals a target is replaced
as the target's action says:

* ``corrupt``: the prompt is answered again by the local runner through the target's
  corruption (seeded by the request, as an input-flagged prompt would be);
* ``refuse``: the target's refusal;
* ``flag``: the answer passes; the decision and audit record say it was caught.

Streaming holds each sentence back until the answer so far, that sentence included,
has passed; a sentence that trips the check is never emitted, and the stream goes on
with the replacement. The added time to first token is one sentence of generation plus
one check (about a millisecond; ``benchmarks/speed.py``).

These functions take the guard as an argument and keep every per-request value local,
so the guard stays stateless per call.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Literal, Protocol

from eco_guard.decision import DecidedAnswer, Decision
from eco_guard.output.answers import AnswerVerdict
from eco_guard.runner.base import GenerationOptions, Messages, normalize_messages

if TYPE_CHECKING:
    from eco_guard.audit import AuditSink
    from eco_guard.routing import Route, TargetRule
    from eco_guard.runner.base import Runner

#: where a sentence ends in a stream: after . ! ? (and closing quotes or brackets) and
#: whitespace, or at a line break
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"'’”)\]]*\s+|\n")


class AnswerCheck(Protocol):
    """What the output stage needs of a checker: one verdict per answer."""

    def check(self, answers: Sequence[str]) -> list[AnswerVerdict]: ...


class Guard(Protocol):
    """What the output stage needs of the guard (:class:`eco_guard.guard.Guard`): its
    checker, rules, routes, audit sink and model. A protocol, so that the guard can
    import this module without the two importing each other."""

    answers: AnswerCheck | None
    audit: AuditSink

    @property
    def runner(self) -> Runner: ...

    def rule(self, target_id: str) -> TargetRule: ...

    def route(self, decision: Decision) -> Route: ...

    def escalate(
        self, chat: Sequence[dict[str, str]], decision: Decision, target: str, stage: Literal["input", "output"], *, action: Literal["corrupt", "refuse", "flag"] | None = None
    ) -> Decision: ...

    def answer_routed(
        self, chats: Sequence[Messages], routes: Sequence[Route], options: GenerationOptions | Sequence[GenerationOptions]
    ) -> list[DecidedAnswer]: ...


def needs_check(guard: Guard, decision: Decision) -> bool:
    """Answers of requests the input stage passed are checked; flagged ones were already handled there."""
    return guard.answers is not None and decision.action == "pass"


def caught(decision: Decision, verdict: AnswerVerdict, guard: Guard, chat: Messages) -> Decision:
    """The decision once the output stage has judged the answer (caught or not)."""
    scored = replace(decision, output_score=round(verdict.score, 6), output_threshold=verdict.threshold)
    if not verdict.flagged or verdict.target is None:
        return scored
    return guard.escalate(normalize_messages(chat), scored, verdict.target, "output")


def screen(
    guard: Guard,
    chats: Sequence[Messages],
    decisions: Sequence[Decision],
    texts: Sequence[str],
    options: GenerationOptions | Sequence[GenerationOptions],
) -> tuple[list[Decision], list[str]]:
    """Check each passed request's answer; re-answer, refuse or keep the ones that reveal a target.

    One batched check for all answers, and one batched generate for all re-answers (each
    with its row's options when ``options`` is one per row).
    """
    per_row = [options] * len(chats) if isinstance(options, GenerationOptions) else list(options)
    decisions, texts = list(decisions), list(texts)
    todo = [i for i, d in enumerate(decisions) if needs_check(guard, d)]
    if not todo:
        return decisions, texts
    assert guard.answers is not None
    verdicts = guard.answers.check([texts[i] for i in todo])
    redo: list[int] = []
    for i, verdict in zip(todo, verdicts):
        decisions[i] = caught(decisions[i], verdict, guard, chats[i])
        if decisions[i].stage == "output":
            if decisions[i].action == "refuse":
                texts[i] = guard.rule(decisions[i].target or "").refusal
            elif decisions[i].action == "corrupt":
                redo.append(i)
    if redo:
        routed = guard.answer_routed([chats[i] for i in redo], [guard.route(decisions[i]) for i in redo], [per_row[i] for i in redo])
        answers = [a.text for a in routed]
        again = guard.answers.check(answers)
        for i, answer, verdict in zip(redo, answers, again):
            # The corrupted answer is checked too; one that still reveals the target is refused.
            if verdict.flagged:
                decisions[i] = refused(decisions[i])
                answer = guard.rule(decisions[i].target or "").refusal
            texts[i] = answer
    return decisions, texts


def refused(decision: Decision) -> Decision:
    """The decision once a corrupted re-answer also revealed the target: refused instead."""
    return replace(decision, action="refuse", corruption=None, scope=None)


def complete_sentences(buffer: str) -> tuple[list[str], str]:
    """Split ``buffer`` into its complete sentences (each with its trailing whitespace) and the unfinished rest.

    A sentence is complete once whitespace follows its end mark, so the text the caller
    sees, joined back, is exactly the model's.
    """
    end = 0
    out: list[str] = []
    for m in _SENTENCE_END.finditer(buffer):
        out.append(buffer[end : m.end()])
        end = m.end()
    return out, buffer[end:]


def _sentences(pieces: Iterable[str]) -> Iterator[str]:
    """Regroup streamed pieces into sentences; the last may be unfinished."""
    buffer = ""
    for piece in pieces:
        done, buffer = complete_sentences(buffer + piece)
        yield from done
    if buffer:
        yield buffer


async def _asentences(pieces: AsyncIterable[str]) -> AsyncIterator[str]:
    """Async twin of :func:`_sentences`."""
    buffer = ""
    async for piece in pieces:
        done, buffer = complete_sentences(buffer + piece)
        for sentence in done:
            yield sentence
    if buffer:
        yield buffer


def _close(*streams: object) -> None:
    """Stop streams that are no longer read (the model stops generating); plain iterators are just dropped."""
    for stream in streams:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


async def _aclose(*streams: object) -> None:
    """Async twin of :func:`_close`."""
    for stream in streams:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def _trip(guard: Guard, chat: Messages, decision: Decision, answer: str) -> Decision | None:
    """The caught decision when ``answer`` (so far) reveals a target, else None."""
    assert guard.answers is not None
    verdict = guard.answers.check([answer])[0]
    return caught(decision, verdict, guard, chat) if verdict.flagged else None


def _still_reveals(guard: Guard, answer: str) -> bool:
    """Whether a corrupted re-answer (so far) still reveals a target."""
    return guard.answers is not None and guard.answers.check([answer])[0].flagged


def _refusal_instead(guard: Guard, chat: Messages, final: Decision) -> str:
    """The refusal that replaces a re-answer that still reveals the target; audited as refused."""
    guard.audit.record(refused(final), chat, kind="output")
    return guard.rule(final.target or "").refusal


def screen_stream(
    guard: Guard, chat: Messages, decision: Decision, pieces: Iterator[str], options: GenerationOptions
) -> Iterator[str]:
    """Emit ``pieces`` sentence by sentence, each only once the answer so far has passed the check.

    On a trip the caught decision is audited (kind ``output``); for ``flag`` the answer
    then streams on unchecked, otherwise the upstream is closed and the replacement
    streams instead of the sentence.
    """
    if not needs_check(guard, decision):
        yield from pieces
        return
    emitted = ""
    sentences = _sentences(pieces)
    for sentence in sentences:
        final = _trip(guard, chat, decision, emitted + sentence)
        if final is None:
            emitted += sentence
            yield sentence
            continue
        guard.audit.record(final, chat, kind="output")
        if final.action == "flag":
            yield sentence
            yield from sentences
            return
        _close(sentences, pieces)
        yield from _replacement(guard, chat, final, options)
        return


def _replacement(guard: Guard, chat: Messages, final: Decision, options: GenerationOptions) -> Iterator[str]:
    """The refusal, or the corrupted re-answer, itself held sentence by sentence: a re-answer that
    still reveals the target goes on as the refusal."""
    route = guard.route(final)
    if route.refusal is not None:
        yield route.refusal
        return
    emitted = ""
    pieces = iter(guard.runner.stream(route.row(chat), options))
    sentences = _sentences(pieces)
    for sentence in sentences:
        if _still_reveals(guard, emitted + sentence):
            _close(sentences, pieces)
            yield _refusal_instead(guard, chat, final)
            return
        emitted += sentence
        yield sentence


async def ascreen_stream(
    guard: Guard, chat: Messages, decision: Decision, pieces: AsyncIterator[str], options: GenerationOptions
) -> AsyncIterator[str]:
    """Async twin of :func:`screen_stream`."""
    if not needs_check(guard, decision):
        async for piece in pieces:
            yield piece
        return
    emitted = ""
    sentences = _asentences(pieces)
    async for sentence in sentences:
        final = _trip(guard, chat, decision, emitted + sentence)
        if final is None:
            emitted += sentence
            yield sentence
            continue
        guard.audit.record(final, chat, kind="output")
        if final.action == "flag":
            yield sentence
            async for rest in sentences:
                yield rest
            return
        await _aclose(sentences, pieces)
        async for piece in _areplacement(guard, chat, final, options):
            yield piece
        return


async def _areplacement(guard: Guard, chat: Messages, final: Decision, options: GenerationOptions) -> AsyncIterator[str]:
    """Async twin of :func:`_replacement`; loading the model (first use) happens off the loop."""
    route = guard.route(final)
    if route.refusal is not None:
        yield route.refusal
        return
    runner = await asyncio.to_thread(lambda: guard.runner)
    emitted = ""
    pieces = runner.astream(route.row(chat), options)
    sentences = _asentences(pieces)
    async for sentence in sentences:
        if _still_reveals(guard, emitted + sentence):
            await _aclose(sentences, pieces)
            yield _refusal_instead(guard, chat, final)
            return
        emitted += sentence
        yield sentence
