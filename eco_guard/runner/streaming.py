"""Turning a stream of token ids into text pieces a client can show as they arrive.

Backend-independent: any backend that emits token ids as it produces them streams
through :class:`TextDeltas`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .templating import ChatFormat


class TextDeltas:
    """Per-stream state: turns ``("tokens", ids)`` / ``("end", None)`` / ``("error", exc)`` events into text deltas.

    It holds back a delta that ends in an incomplete UTF-8 sequence (decoded as U+FFFD)
    until the next token completes it, so a client never sees a broken character, and
    (plain-format models) text that may be the start of a stop string, so the streamed
    answer always equals the generated one.
    """

    def __init__(self, chat_format: ChatFormat, eos_ids: Sequence[int]) -> None:
        self._format = chat_format
        self._eos = set(eos_ids)
        self._ids: list[int] = []
        self._sent = ""
        self.done = False

    def feed(self, kind: str, payload: Any) -> list[str]:
        if kind == "error":
            self.done = True
            raise payload
        if kind == "end":
            self.done = True
        else:
            for t in payload:
                if t in self._eos:
                    self.done = True
                    break
                self._ids.append(int(t))
        text, stopped = self._format.cut(self._format.tokenizer.decode(self._ids, skip_special_tokens=True))
        self.done = self.done or stopped
        if not self.done and (text.endswith("\ufffd") or self._format.pending(text)):
            return []
        if len(text) > len(self._sent) and text.startswith(self._sent):
            piece, self._sent = text[len(self._sent):], text
            return [piece]
        return []
