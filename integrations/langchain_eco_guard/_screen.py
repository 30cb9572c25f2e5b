"""The output stage on downstream answers: what a LangChain runnable returned, checked before the caller sees it.

A downstream chain returns a string, a message or something else, and streams strings
or message chunks. Text is taken out, checked by :meth:`eco_guard.guard.Guard.screen_answer`
(or streamed through :meth:`~eco_guard.guard.Guard.screen_stream`) and put back in the
same shape. An answer that passes is returned as the very object the downstream gave,
so unflagged answers are untouched; other outputs (tool calls, dicts) carry no answer
text and pass as they are.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, BaseMessageChunk

from eco_guard.decision import Decision
from eco_guard.guard import Guard


def answer_text(out: Any) -> str | None:
    """The answer text of a downstream output, or None when it has none (tool calls, structured output)."""
    if isinstance(out, str):
        return out
    if isinstance(out, BaseMessage):
        return out.text
    return None


def _reshaped(out: Any, text: str) -> Any:
    if isinstance(out, str):
        return text
    return AIMessage(content=text, id=getattr(out, "id", None))


def screen_output(guard: Guard, chat: Sequence[dict[str, str]], decision: Decision, out: Any) -> tuple[Any, Decision]:
    """The output to return and the final decision."""
    text = answer_text(out)
    if text is None or isinstance(out, BaseException):
        return out, decision
    result = guard.screen_answer(list(chat), decision, text)
    if result.decision.stage != "output" or result.text == text:
        return out, result.decision
    return _reshaped(out, result.text), result.decision


async def ascreen_output(guard: Guard, chat: Sequence[dict[str, str]], decision: Decision, out: Any) -> tuple[Any, Decision]:
    """Async twin of :func:`screen_output`."""
    text = answer_text(out)
    if text is None or isinstance(out, BaseException):
        return out, decision
    result = await guard.ascreen_answer(list(chat), decision, text)
    if result.decision.stage != "output" or result.text == text:
        return out, result.decision
    return _reshaped(out, result.text), result.decision


def _as_chunk(kind: str, text: str) -> Any:
    return text if kind == "str" else AIMessageChunk(content=text)


def _kind(chunk: Any) -> str | None:
    if isinstance(chunk, str):
        return "str"
    if isinstance(chunk, BaseMessageChunk):
        return "chunk"
    return None


def screen_chunks(guard: Guard, chat: Sequence[dict[str, str]], decision: Decision, chunks: Iterator[Any]) -> Iterator[Any]:
    """Stream a downstream's chunks sentence by sentence, each only once it has passed the output stage.

    A stream whose first chunk carries no answer text (dicts of a structured chain) passes
    as it is: there is no answer in it to check.
    """
    first = next(chunks, None)
    if first is None:
        return
    if _kind(first) is None:
        yield first
        yield from chunks
        return
    chunks = itertools.chain([first], chunks)
    kind: list[str] = []

    def texts() -> Iterator[str]:
        for chunk in chunks:
            k = _kind(chunk)
            if k is None:
                continue
            kind[:1] = [k]
            yield chunk if k == "str" else chunk.text

    for piece in guard.screen_stream(list(chat), decision, texts()):
        yield _as_chunk(kind[0] if kind else "chunk", piece)


async def ascreen_chunks(
    guard: Guard, chat: Sequence[dict[str, str]], decision: Decision, chunks: AsyncIterator[Any]
) -> AsyncIterator[Any]:
    """Async twin of :func:`screen_chunks`."""
    first = await anext(chunks, None)
    if first is None:
        return
    if _kind(first) is None:
        yield first
        async for chunk in chunks:
            yield chunk
        return
    kind: list[str] = []

    async def texts() -> AsyncIterator[str]:
        for chunk in itertools.chain([first]):
            k = _kind(chunk)
            kind[:1] = [k or "chunk"]
            yield chunk if k == "str" else chunk.text
        async for chunk in chunks:
            k = _kind(chunk)
            if k is None:
                continue
            kind[:1] = [k]
            yield chunk if k == "str" else chunk.text

    async for piece in guard.ascreen_stream(list(chat), decision, texts()):
        yield _as_chunk(kind[0] if kind else "chunk", piece)
