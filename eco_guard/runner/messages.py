"""Chat messages: the one validation every entry point shares.

Kept apart from the Runner protocol (``base.py``) and from templating because the CLI,
the Python API and the server validate chats long before any runner is involved.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ..errors import InputError

Message = Mapping[str, str]
Messages = Sequence[Message]
ROLES = ("system", "user", "assistant")


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
