"""Chat templating: turning a chat into the exact text a model reads.

Instruct models ship a chat template and it is used as is. A base model (Gemma 3 270M
as packaged here has none) gets a plain question/answer format instead; since a base
model does not know when its turn is over, that format also names the strings that end
an answer (a blank line, or the model starting the next question itself).

Every backend templates through here, so the character spans of the user turns (what
``masking.py`` corrupts) are found the same way whatever serves the model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

#: the plain format's turn labels; an answer ends where the model starts a new turn
PLAIN_LABELS = {"user": "Question: ", "assistant": "Answer: "}
PLAIN_STOPS = ("\n\n", "\nQuestion:")


@dataclass(frozen=True)
class RenderedChat:
    """The templated text and the character spans of the user turns' content."""

    text: str
    user_spans: list[tuple[int, int]]


@dataclass(frozen=True)
class ChatFormat:
    """How one tokenizer's chats are rendered, and which strings end an answer."""

    tokenizer: Any
    plain: bool
    stops: tuple[str, ...]

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> "ChatFormat":
        """The tokenizer's own chat template when it has one, else the plain format."""
        plain = getattr(tokenizer, "chat_template", None) is None
        return cls(tokenizer, plain, PLAIN_STOPS if plain else ())

    def render(self, msgs: Sequence[dict[str, str]]) -> RenderedChat:
        """Template validated messages (``messages.normalize_messages``) for generation."""
        if self.plain:
            text = self._plain(msgs)
        else:
            text = self.tokenizer.apply_chat_template(list(msgs), tokenize=False, add_generation_prompt=True)
        return RenderedChat(text, user_spans(text, msgs))

    def _plain(self, msgs: Sequence[dict[str, str]]) -> str:
        """System turns as plain paragraphs, then ``Question:``/``Answer:`` turns, ending in ``Answer:``.

        The BOS token is written out when the tokenizer would add one itself (Gemma
        reads garbage without it), since prompts are tokenised without special tokens.
        """
        parts: list[str] = []
        for m in msgs:
            if m["role"] == "system":
                parts.append(m["content"] + "\n\n")
            elif m["role"] == "user":
                parts.append(PLAIN_LABELS["user"] + m["content"] + "\n")
            else:
                parts.append(PLAIN_LABELS["assistant"] + m["content"] + "\n\n")
        return _bos_text(self.tokenizer) + "".join(parts) + PLAIN_LABELS["assistant"].rstrip()

    def cut(self, text: str) -> tuple[str, bool]:
        """``text`` up to the first stop string after the answer has begun; whether one was found."""
        begun = len(text) - len(text.lstrip())
        ends = [i for i in (text.find(s, begun) for s in self.stops) if i >= 0]
        return (text[: min(ends)], True) if ends else (text, False)

    def pending(self, text: str) -> bool:
        """Whether ``text`` ends in the beginning of a stop string (a streamer holds it back)."""
        return any(text.endswith(s[:k]) for s in self.stops for k in range(1, len(s)))


def _bos_text(tokenizer: Any) -> str:
    bos = getattr(tokenizer, "bos_token", None)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if not bos or bos_id is None:
        return ""
    ids = tokenizer("x")["input_ids"]
    return bos if ids and ids[0] == bos_id else ""


def user_spans(text: str, msgs: Sequence[dict[str, str]]) -> list[tuple[int, int]]:
    """Character spans of the user turns' content in the rendered ``text``.

    Found by searching turn by turn, so no assumption is made about how a template
    wraps turns; a template that rewrites a turn's content leaves that turn unmasked.
    """
    spans: list[tuple[int, int]] = []
    pos = 0
    for msg in msgs:
        content = msg["content"]
        if not content:
            continue
        start = text.find(content, pos)
        if start < 0:
            continue
        end = start + len(content)
        if msg["role"] == "user":
            spans.append((start, end))
        pos = end
    return spans
