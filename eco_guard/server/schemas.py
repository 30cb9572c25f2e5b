"""Request bodies of the OpenAI-compatible API, as pydantic models.

Unknown fields are ignored rather than rejected: OpenAI clients send fields this server
does not use (``user``, ``metadata``, ...) and must keep working unchanged. Fields whose
meaning we cannot honour (``n`` > 1, tools) are rejected with a clear message instead of
being silently dropped.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ChatMessage(BaseModel):
    """One turn. ``role`` is checked later by ``normalize_messages`` so the server and the
    library reject an unknown role with the same message."""

    model_config = ConfigDict(extra="ignore")

    role: str
    content: str | list[dict[str, Any]] | None = None

    def text(self) -> Any:
        """The turn's text; OpenAI's list-of-parts form is joined, non-text parts refused."""
        if not isinstance(self.content, list):
            return self.content
        pieces: list[str] = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                return None  # normalize_messages reports "expected a string"
            pieces.append(part["text"])
        return "".join(pieces)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    messages: list[ChatMessage]
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int = Field(default=1, ge=1, le=1, description="only one choice per request is supported")
    stream: bool = False
    stream_options: StreamOptions | None = None
    #: vLLM's extension: generate exactly max_tokens (benchmarks compare equal work)
    ignore_eos: bool = False


class GuardCheckRequest(BaseModel):
    """POST /v1/guard/check: one text, one chat, or a list of either."""

    model_config = ConfigDict(extra="ignore")

    #: the guard to check with (optional when the server serves one guard)
    model: str | None = None
    input: str | list[str | list[ChatMessage]] = Field(description="texts or chats to classify")
