"""``EcoGuardChatModel``: a LangChain chat model over an eco-guard guard and its local model."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LangSmithParams
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from pydantic import ConfigDict, Field

from eco_guard.decision import Decision
from eco_guard.integration import GuardField
from eco_guard.runner.base import GenerationOptions

from ._convert import StopCutter, decision_metadata, to_chat

#: Keyword argument by which a caller that has already classified the request (the
#: router, the agent middleware) hands over its :class:`~eco_guard.decision.Decision`,
#: as is: the corruption it records is the one applied, never re-parsed. Without it the
#: model classifies the request itself.
DECISION_KWARG = "eco_guard_decision"


class EcoGuardChatModel(BaseChatModel):
    """Answers through the guard: flagged prompts from corrupted embeddings, others plainly.

    Used alone it is a complete guarded model (classify, then corrupt or not, with the
    bundled local LM). The router and the middleware use it for the flagged branch only,
    passing their decision along so that nothing is classified twice.

    The guard's :class:`~eco_guard.decision.Decision` is in every answer's
    ``response_metadata["eco_guard"]`` (on the first chunk when streaming). Tool calling,
    structured output and images are not supported: a small local model answering a
    prompt it must not know about has no business calling tools.

    Example:
        .. code-block:: python

            model = EcoGuardChatModel(guard="guard/", max_tokens=64)
            model.invoke("What is the capital of France?").response_metadata["eco_guard"]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, populate_by_name=True)

    guard: GuardField
    """A fitted guard, or the path of a fitted-guard directory."""
    model_name: str = Field(default="eco-guard-local", alias="model")
    """Name reported in traces; the model itself is the one named by the guard's policy."""
    max_tokens: int = Field(default=128, alias="max_new_tokens", gt=0)
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] | None = Field(default=None, alias="stop_sequences")
    timeout: float | None = None
    """Accepted for interface compatibility; local generation is bounded by ``max_tokens``."""
    max_retries: int = 0
    """Accepted for interface compatibility; a local model has no transient failures to retry."""
    streaming: bool = False
    """Use the streaming path even for ``invoke`` (callbacks then see every token)."""

    @property
    def _llm_type(self) -> str:
        return "eco-guard"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "guard": self.guard.name,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        params = LangSmithParams(
            ls_provider="eco_guard",
            ls_model_name=kwargs.get("model") if isinstance(kwargs.get("model"), str) else self.model_name,
            ls_model_type="chat",
            ls_temperature=kwargs.get("temperature", self.temperature),
            ls_max_tokens=kwargs.get("max_tokens", self.max_tokens),
        )
        stops = stop or self.stop
        if stops:
            params["ls_stop"] = stops
        return params

    # ------------------------------------------------------------------ helpers

    def _options(self, kwargs: dict[str, Any]) -> GenerationOptions:
        """Decoding settings: the model's fields, overridable per call (e.g. via ``bind``)."""
        return GenerationOptions(
            max_new_tokens=int(kwargs.get("max_tokens", self.max_tokens)),
            temperature=float(kwargs.get("temperature", self.temperature)),
            top_p=float(kwargs.get("top_p", self.top_p)),
        )

    def _given_decision(self, kwargs: dict[str, Any]) -> Decision | None:
        given = kwargs.get(DECISION_KWARG)
        if given is not None and not isinstance(given, Decision):
            raise TypeError(f"{DECISION_KWARG} must be an eco_guard Decision, got {type(given).__name__}")
        return given

    def _pieces(self, chat: list[dict[str, str]], decision: Decision | None, options: GenerationOptions) -> tuple[Decision, Iterator[str]]:
        if decision is None:
            stream = self.guard.stream(chat, options)
            return stream.decision, iter(stream)
        return decision, self.guard.stream_decided(chat, decision, options)

    async def _apieces(
        self, chat: list[dict[str, str]], decision: Decision | None, options: GenerationOptions
    ) -> tuple[Decision, AsyncIterator[str]]:
        if decision is None:
            stream = await self.guard.astream(chat, options)
            return stream.decision, aiter(stream)
        return decision, self.guard.astream_decided(chat, decision, options)

    def _result(self, text: str, decision: Decision, stop: list[str] | None) -> ChatResult:
        message = AIMessage(content=StopCutter(stop or self.stop).cut(text), response_metadata=decision_metadata(decision, self.model_name))
        return ChatResult(generations=[ChatGeneration(message=message)], llm_output={"eco_guard": decision.to_dict()})

    # ------------------------------------------------------------------ LangChain hooks

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chat, options, decision = to_chat(messages), self._options(kwargs), self._given_decision(kwargs)
        if decision is None:
            result = self.guard.invoke(chat, options)
            return self._result(result.text, result.decision, stop)
        result = self.guard.answer_decided_result(chat, decision, options)
        return self._result(result.text, result.decision, stop)

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chat, options, decision = to_chat(messages), self._options(kwargs), self._given_decision(kwargs)
        if decision is None:
            result = await self.guard.ainvoke(chat, options)
            return self._result(result.text, result.decision, stop)
        result = await asyncio.to_thread(self.guard.answer_decided_result, chat, decision, options)
        return self._result(result.text, result.decision, stop)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        decision, pieces = self._pieces(to_chat(messages), self._given_decision(kwargs), self._options(kwargs))
        chunker = _Chunker(decision, StopCutter(stop or self.stop), self.model_name)
        try:
            for piece in itertools.chain(pieces, [None]):  # None: the end; flush what is held back
                for chunk in chunker.feed(piece):
                    if run_manager is not None and chunk.text:
                        run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
                if chunker.done:
                    return
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()  # stops the local generation when the consumer stops early

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        decision, pieces = await self._apieces(to_chat(messages), self._given_decision(kwargs), self._options(kwargs))
        chunker = _Chunker(decision, StopCutter(stop or self.stop), self.model_name)
        try:
            while not chunker.done:
                piece = await anext(pieces, None)
                for chunk in chunker.feed(piece):
                    if run_manager is not None and chunk.text:
                        await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                    yield chunk
        finally:
            aclose = getattr(pieces, "aclose", None)
            if aclose is not None:
                await aclose()


class _Chunker:
    """Turns text pieces into chunks, for the sync and the async stream alike: cuts at
    stop sequences, and puts the decision on the first chunk so a consumer knows what
    the guard decided before any text arrives. Lives for one call only."""

    def __init__(self, decision: Decision, cutter: StopCutter, model_name: str) -> None:
        self.pending: Decision | None = decision
        self.cutter = cutter
        self.model_name = model_name
        self.done = False

    def feed(self, piece: str | None) -> list[ChatGenerationChunk]:
        """Chunks for one piece; ``None`` ends the stream."""
        if piece is None:
            text, self.done = self.cutter.flush(), True
        else:
            text = self.cutter.feed(piece)
            self.done = self.cutter.done
        if not text and self.pending is None:
            return []
        meta = decision_metadata(self.pending, self.model_name) if self.pending is not None else {}
        self.pending = None
        return [ChatGenerationChunk(message=AIMessageChunk(content=text, response_metadata=meta))]


__all__ = ["DECISION_KWARG", "EcoGuardChatModel"]
