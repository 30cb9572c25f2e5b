"""``EcoGuardLLM``: a LlamaIndex LLM that answers through an eco-guard guard.

Flagged prompts are answered by the guard's local model from corrupted embeddings (or
refused); the others by the same local model, untouched. The guard's decision comes
back in every response's ``additional_kwargs["eco_guard"]``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    ChatResponse,
    ChatResponseAsyncGen,
    ChatResponseGen,
    CompletionResponse,
    CompletionResponseAsyncGen,
    CompletionResponseGen,
    LLMMetadata,
    MessageRole,
)
from llama_index.core.bridge.pydantic import ConfigDict, Field
from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
from llama_index.core.llms.custom import CustomLLM

from eco_guard.decision import Decision
from eco_guard.integration import GuardField
from eco_guard.runner.base import GenerationOptions

_ROLES = {
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
}


def to_chat(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    """LlamaIndex messages as eco-guard chat dicts; tool and function turns are left out
    because a plain chat template has no place for them."""
    chat = []
    for message in messages:
        role = _ROLES.get(message.role)
        if role is not None and (role != "assistant" or (message.content or "").strip()):
            chat.append({"role": role, "content": message.content or ""})
    return chat


def _extra(decision: Decision) -> dict[str, Any]:
    return {"eco_guard": decision.to_dict()}


def _chat_response(text: str, decision: Decision, delta: str | None = None) -> ChatResponse:
    return ChatResponse(
        message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta, additional_kwargs=_extra(decision)
    )


class EcoGuardLLM(CustomLLM):
    """The guard plus its local model as a LlamaIndex LLM (chat, completion, streaming, async).

    Async methods run the model in worker threads and stream tokens through the event
    loop, so a server's loop keeps serving while an answer is generated.

    Example:
        .. code-block:: python

            llm = EcoGuardLLM(guard="guard/", max_new_tokens=64)
            llm.complete("What is the capital of France?").additional_kwargs["eco_guard"]
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    guard: GuardField = Field(description="A fitted guard, or the path of a fitted-guard directory.")
    max_new_tokens: int = Field(default=128, gt=0, description="Most tokens in one answer.")
    temperature: float = Field(default=0.0, ge=0.0, description="0 decodes greedily (reproducible).")
    context_window: int = Field(default=8192, gt=0, description="The local model's context (SmolLM2: 8192).")
    model_name: str = Field(default="eco-guard-local", description="Name reported in metadata.")

    @classmethod
    def class_name(cls) -> str:
        return "EcoGuardLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.max_new_tokens,
            is_chat_model=True,
            is_function_calling_model=False,
            model_name=self.model_name,
        )

    def _options(self, kwargs: dict[str, Any]) -> GenerationOptions:
        return GenerationOptions(
            max_new_tokens=int(kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens))),
            temperature=float(kwargs.get("temperature", self.temperature)),
        )

    # ------------------------------------------------------------------ completion

    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        result = self.guard.invoke(prompt, self._options(kwargs))
        return CompletionResponse(text=result.text, additional_kwargs=_extra(result.decision))

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        stream = self.guard.stream(prompt, self._options(kwargs))

        def gen() -> Iterator[CompletionResponse]:
            text = ""
            for piece in stream:
                text += piece
                yield CompletionResponse(text=text, delta=piece, additional_kwargs=_extra(stream.decision))

        return gen()

    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        result = await self.guard.ainvoke(prompt, self._options(kwargs))
        return CompletionResponse(text=result.text, additional_kwargs=_extra(result.decision))

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        stream = await self.guard.astream(prompt, self._options(kwargs))

        async def gen() -> AsyncIterator[CompletionResponse]:
            text = ""
            async for piece in stream:
                text += piece
                yield CompletionResponse(text=text, delta=piece, additional_kwargs=_extra(stream.decision))

        return gen()

    # ------------------------------------------------------------------ chat

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        result = self.guard.invoke(to_chat(messages), self._options(kwargs))
        return _chat_response(result.text, result.decision)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        stream = self.guard.stream(to_chat(messages), self._options(kwargs))

        def gen() -> Iterator[ChatResponse]:
            text = ""
            for piece in stream:
                text += piece
                yield _chat_response(text, stream.decision, piece)

        return gen()

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        result = await self.guard.ainvoke(to_chat(messages), self._options(kwargs))
        return _chat_response(result.text, result.decision)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        stream = await self.guard.astream(to_chat(messages), self._options(kwargs))

        async def gen() -> AsyncIterator[ChatResponse]:
            text = ""
            async for piece in stream:
                text += piece
                yield _chat_response(text, stream.decision, piece)

        return gen()


__all__ = ["EcoGuardLLM"]
