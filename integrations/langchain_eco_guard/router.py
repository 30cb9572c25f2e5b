"""``EcoGuardRouter``: put the guard in front of any chat model or chain.

Unflagged input goes to the downstream runnable exactly as it came (same input, same
config apart from the child callbacks that nest its trace under the router's), and its
result is returned as is once the output stage has checked it (an answer revealing a
target is replaced, see :mod:`langchain_eco_guard._screen`). Flagged input never reaches
the downstream: it is answered by the ECO model from corrupted embeddings, or refused,
as the policy says.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from langchain_core.callbacks import (
    AsyncCallbackManagerForChainRun,
    CallbackManagerForChainRun,
)
from langchain_core.callbacks.manager import adispatch_custom_event, dispatch_custom_event
from langchain_core.messages import AIMessage, BaseMessage, BaseMessageChunk
from langchain_core.runnables import Runnable, RunnableConfig, RunnableSerializable
from langchain_core.runnables.config import get_executor_for_config
from pydantic import ConfigDict, PrivateAttr, model_validator

from eco_guard.decision import Decision
from eco_guard.integration import GuardField, diverts

from ._convert import input_messages, to_chat
from ._screen import ascreen_chunks, ascreen_output, screen_chunks, screen_output
from .chat_models import DECISION_KWARG, EcoGuardChatModel

#: Name of the custom callback event that reports every decision, passed ones included
#: (a passed request's output is the downstream's, untouched, so it cannot carry it).
DECISION_EVENT = "eco_guard_decision"


def output_kind(runnable: Runnable[Any, Any]) -> Literal["text", "message"] | None:
    """What a runnable answers with, read from its declared ``OutputType``: ``"text"``
    (``str``, e.g. a chain ending in a string parser), ``"message"`` (chat messages, e.g.
    a chat model) or ``None`` when it does not say, or says something else."""
    try:
        declared = runnable.OutputType
    except Exception:  # noqa: BLE001 - some runnables cannot infer their output type
        return None
    kinds = {_kind_of(t) for t in _alternatives(declared)}
    return kinds.pop() if len(kinds) == 1 else None


def _alternatives(tp: Any) -> list[Any]:
    """The plain types a type annotation allows (``Annotated`` and ``Union`` unwrapped)."""
    if get_origin(tp) is Annotated:
        return _alternatives(get_args(tp)[0])
    if get_origin(tp) in (Union, UnionType):
        return [t for arg in get_args(tp) for t in _alternatives(arg)]
    return [tp]


def _kind_of(tp: Any) -> Literal["text", "message"] | None:
    if tp is str:
        return "text"
    if isinstance(tp, type) and issubclass(tp, BaseMessage):
        return "message"
    return None


class EcoGuardRouter(RunnableSerializable[Any, Any]):
    """Routes each input: pass to ``downstream``, or answer with the ECO model.

    Args:
        guard: a fitted guard, or the path of a fitted-guard directory.
        downstream: the chat model or chain that answers unflagged input.
        eco_model: the model for flagged input; by default an :class:`EcoGuardChatModel`
            over the same guard.
        input_key: for dict inputs, the entry that holds the prompt.
        output: what every answer is, flagged or not: ``"text"`` (a ``str``) or
            ``"message"`` (an ``AIMessage``; chunks when streaming). ``"auto"`` (the
            default) reads it from the downstream's declared output type and raises when
            the downstream does not declare one, because a flagged answer never comes from
            the downstream and must still have its type.

    Example:
        .. code-block:: python

            guarded = EcoGuardRouter(guard="guard/", downstream=llm) | StrOutputParser()
            guarded.invoke("What is the capital of France?")
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    guard: GuardField
    downstream: Runnable[Any, Any]
    eco_model: EcoGuardChatModel | None = None
    input_key: str | None = None
    output: Literal["auto", "text", "message"] = "auto"

    _text_output: bool = PrivateAttr(default=False)

    @model_validator(mode="after")
    def _defaults(self) -> "EcoGuardRouter":
        if self.eco_model is None:
            self.eco_model = EcoGuardChatModel(guard=self.guard)
        kind = output_kind(self.downstream) if self.output == "auto" else self.output
        if kind is None:
            raise ValueError(
                f"EcoGuardRouter cannot tell whether the downstream ({type(self.downstream).__name__}) answers with text "
                "or messages, and flagged input is answered without it; pass output='text' or output='message'"
            )
        self._text_output = kind == "text"
        return self

    @property
    def InputType(self) -> Any:  # noqa: N802 - LangChain's name
        return self.downstream.InputType

    @property
    def OutputType(self) -> Any:  # noqa: N802 - LangChain's name
        if self._text_output:
            return str
        return self.downstream.OutputType if output_kind(self.downstream) == "message" else AIMessage

    # ------------------------------------------------------------------ helpers

    def _decide(self, value: Any) -> tuple[list[BaseMessage], Decision]:
        messages = input_messages(value, self.input_key)
        return messages, self.guard.check(to_chat(messages))

    def _shape(self, message: BaseMessage) -> Any:
        return message.text if self._text_output else message

    def _eco_kwargs(self, decision: Decision) -> dict[str, Any]:
        return {DECISION_KWARG: decision}

    @property
    def _eco(self) -> EcoGuardChatModel:
        assert self.eco_model is not None  # set by the validator
        return self.eco_model

    # ------------------------------------------------------------------ invoke

    def invoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:  # noqa: A002
        return self._call_with_config(self._invoke, input, config, **kwargs)

    def _invoke(self, value: Any, run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any) -> Any:
        messages, decision = self._decide(value)
        dispatch_custom_event(DECISION_EVENT, decision.to_dict(), config=config)
        if not diverts(decision):
            return screen_output(self.guard, to_chat(messages), decision, self.downstream.invoke(value, config, **kwargs))[0]
        return self._shape(self._eco.invoke(messages, config, **self._eco_kwargs(decision)))

    async def ainvoke(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Any:  # noqa: A002
        return await self._acall_with_config(self._ainvoke, input, config, **kwargs)

    async def _ainvoke(
        self, value: Any, run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Any:
        messages = input_messages(value, self.input_key)
        decision = await self.guard.acheck(to_chat(messages))
        await adispatch_custom_event(DECISION_EVENT, decision.to_dict(), config=config)
        if not diverts(decision):
            out = await self.downstream.ainvoke(value, config, **kwargs)
            return (await ascreen_output(self.guard, to_chat(messages), decision, out))[0]
        return self._shape(await self._eco.ainvoke(messages, config, **self._eco_kwargs(decision)))

    # ------------------------------------------------------------------ stream

    def stream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> Iterator[Any]:  # noqa: A002
        yield from self._transform_stream_with_config(iter([input]), self._stream, config, **kwargs)

    def _stream(
        self, inputs: Iterator[Any], run_manager: CallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> Iterator[Any]:
        value = next(inputs)
        messages, decision = self._decide(value)
        dispatch_custom_event(DECISION_EVENT, decision.to_dict(), config=config)
        if not diverts(decision):
            yield from screen_chunks(self.guard, to_chat(messages), decision, self.downstream.stream(value, config, **kwargs))
            return
        for chunk in self._eco.stream(messages, config, **self._eco_kwargs(decision)):
            yield self._shape_chunk(chunk)

    async def astream(self, input: Any, config: RunnableConfig | None = None, **kwargs: Any) -> AsyncIterator[Any]:  # noqa: A002
        async def one() -> AsyncIterator[Any]:
            yield input

        async for chunk in self._atransform_stream_with_config(one(), self._astream, config, **kwargs):
            yield chunk

    async def _astream(
        self, inputs: AsyncIterator[Any], run_manager: AsyncCallbackManagerForChainRun, config: RunnableConfig, **kwargs: Any
    ) -> AsyncIterator[Any]:
        value = await anext(inputs)
        messages = input_messages(value, self.input_key)
        decision = await self.guard.acheck(to_chat(messages))
        await adispatch_custom_event(DECISION_EVENT, decision.to_dict(), config=config)
        if not diverts(decision):
            async for chunk in ascreen_chunks(self.guard, to_chat(messages), decision, self.downstream.astream(value, config, **kwargs)):
                yield chunk
            return
        async for chunk in self._eco.astream(messages, config, **self._eco_kwargs(decision)):
            yield self._shape_chunk(chunk)

    def _shape_chunk(self, chunk: BaseMessageChunk) -> Any:
        return chunk.text if self._text_output else chunk

    # ------------------------------------------------------------------ batch

    def batch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """One classifier pass for all inputs; then the unflagged ones go to the
        downstream's own ``batch`` while each flagged one is answered by the ECO model,
        all at the same time."""
        return self._batch_with_config(self._batch, inputs, config, return_exceptions=return_exceptions, **kwargs)

    def _split(
        self, inputs: list[Any]
    ) -> tuple[list[Any], dict[int, tuple[list[BaseMessage], Decision]], list[int], dict[int, tuple[list[BaseMessage], Decision]]]:
        """Per input: an exception (bad input), or messages + decision; the flagged, the passed indices, and the passed ones' messages + decision."""
        results: list[Any] = [None] * len(inputs)
        parsed: dict[int, list[BaseMessage]] = {}
        for i, value in enumerate(inputs):
            try:
                parsed[i] = input_messages(value, self.input_key)
            except Exception as exc:  # noqa: BLE001 - reported for this input only
                results[i] = exc
        order = sorted(parsed)
        decisions = self.guard.check_batch([to_chat(parsed[i]) for i in order]) if order else []
        flagged = {i: (parsed[i], d) for i, d in zip(order, decisions) if diverts(d)}
        passed = [i for i in order if i not in flagged]
        decided = {i: (parsed[i], d) for i, d in zip(order, decisions)}
        return results, flagged, passed, decided

    def _batch(self, inputs: list[Any], config: list[RunnableConfig], **kwargs: Any) -> list[Any]:
        results, flagged, passed, decided = self._split(inputs)

        def eco(i: int) -> Any:
            messages, decision = flagged[i]
            try:
                return self._shape(self._eco.invoke(messages, config[i], **self._eco_kwargs(decision)))
            except Exception as exc:  # noqa: BLE001 - collected; _batch_with_config raises or returns it
                return exc

        with get_executor_for_config(config[0] if config else None) as executor:
            eco_futures = {i: executor.submit(eco, i) for i in flagged}
            if passed:
                outs = self.downstream.batch(
                    [inputs[i] for i in passed], [config[i] for i in passed], return_exceptions=True, **kwargs
                )
                results_update = {
                    i: screen_output(self.guard, to_chat(decided[i][0]), decided[i][1], out)[0] for i, out in zip(passed, outs)
                }
            else:
                results_update = {}
            results_update.update({i: f.result() for i, f in eco_futures.items()})
        for i, out in results_update.items():
            results[i] = out
        return results

    async def abatch(
        self,
        inputs: list[Any],
        config: RunnableConfig | list[RunnableConfig] | None = None,
        *,
        return_exceptions: bool = False,
        **kwargs: Any,
    ) -> list[Any]:
        """Async twin of :meth:`batch`."""
        return await self._abatch_with_config(self._abatch, inputs, config, return_exceptions=return_exceptions, **kwargs)

    async def _abatch(self, inputs: list[Any], config: list[RunnableConfig], **kwargs: Any) -> list[Any]:
        results, flagged, passed, decided = await asyncio.to_thread(self._split, inputs)

        async def eco(i: int) -> Any:
            messages, decision = flagged[i]
            try:
                return self._shape(await self._eco.ainvoke(messages, config[i], **self._eco_kwargs(decision)))
            except Exception as exc:  # noqa: BLE001 - collected; _abatch_with_config raises or returns it
                return exc

        async def downstream() -> list[Any]:
            if not passed:
                return []
            return await self.downstream.abatch(
                [inputs[i] for i in passed], [config[i] for i in passed], return_exceptions=True, **kwargs
            )

        flagged_ids = list(flagged)
        outs, *eco_outs = await asyncio.gather(downstream(), *(eco(i) for i in flagged_ids))
        outs = [(await ascreen_output(self.guard, to_chat(decided[i][0]), decided[i][1], out))[0] for i, out in zip(passed, outs)]
        for i, out in [*zip(passed, outs), *zip(flagged_ids, eco_outs)]:
            results[i] = out
        return results


__all__ = ["DECISION_EVENT", "EcoGuardRouter"]
