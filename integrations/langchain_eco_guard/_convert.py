"""Conversions between LangChain inputs and eco-guard chats, shared by every class here."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.messages import BaseMessage, HumanMessage, convert_to_messages
from langchain_core.prompt_values import PromptValue

from eco_guard.decision import Decision
from eco_guard.errors import InputError

#: LangChain message types the local model understands, and their chat roles. Tool
#: results and function calls have no place in a plain chat template, so they are left
#: out of what the local model sees (the classifier only reads user turns anyway).
_ROLES = {"human": "user", "ai": "assistant", "system": "system"}


def to_chat(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    """LangChain messages as eco-guard chat dicts (role + text content)."""
    chat: list[dict[str, str]] = []
    for message in messages:
        role = _ROLES.get(message.type)
        if role is None and message.type == "chat":
            role = getattr(message, "role", None) if getattr(message, "role", None) in ("user", "assistant", "system") else None
        if role is None:
            continue
        text = message.text
        if role == "assistant" and not text.strip():
            continue  # an AI turn that only called tools says nothing the local model can use
        chat.append({"role": role, "content": text})
    return chat


def has_user_text(chat: Sequence[Mapping[str, str]]) -> bool:
    """Whether there is anything for the classifier to judge."""
    return any(m["role"] == "user" and m["content"].strip() for m in chat)


def input_messages(value: Any, input_key: str | None = None) -> list[BaseMessage]:
    """The messages a runnable input stands for: a string, a prompt value, messages, or a
    dict (its ``input_key`` entry, its ``messages`` entry, or its only string value)."""
    if isinstance(value, str):
        return [HumanMessage(content=value)]
    if isinstance(value, PromptValue):
        return value.to_messages()
    if isinstance(value, BaseMessage):
        return [value]
    if isinstance(value, Mapping):
        if input_key is not None:
            if input_key not in value:
                raise InputError(f"input has no key {input_key!r} (keys: {sorted(value)})")
            return input_messages(value[input_key])
        if "messages" in value:
            return input_messages(value["messages"])
        texts = [v for v in value.values() if isinstance(v, str)]
        if len(texts) == 1:
            return [HumanMessage(content=texts[0])]
        raise InputError(f"cannot tell which entry of a dict input {sorted(value)} is the prompt; set input_key")
    return convert_to_messages(value)


def decision_metadata(decision: Decision, model_name: str) -> dict[str, Any]:
    """``response_metadata`` of an answer: the guard's decision travels with the message."""
    return {"eco_guard": decision.to_dict(), "model_name": model_name, "model_provider": "eco_guard"}


class StopCutter:
    """Cuts a stream of text pieces at the first stop sequence.

    The last ``len(longest stop) - 1`` characters are held back until it is clear they
    do not start a stop sequence, so a stop split across two tokens is still caught.
    One class serves the sync and the async streams.
    """

    def __init__(self, stops: Sequence[str] | None) -> None:
        self.stops = [s for s in (stops or ()) if s]
        self.hold = max((len(s) for s in self.stops), default=1) - 1
        self.buffer = ""
        self.done = False

    def feed(self, piece: str) -> str:
        """Text that may be emitted now; sets ``done`` once a stop sequence is seen."""
        if not self.stops:
            return piece
        self.buffer += piece
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.done = self.buffer[:cut], "", True
            return out
        keep = max(0, len(self.buffer) - self.hold)
        out, self.buffer = self.buffer[:keep], self.buffer[keep:]
        return out

    def flush(self) -> str:
        """What is still held back when the stream ends without a stop sequence."""
        out, self.buffer = self.buffer, ""
        return out

    def cut(self, text: str) -> str:
        """A whole answer cut at the first stop sequence."""
        return self.feed(text) + ("" if self.done else self.flush())
