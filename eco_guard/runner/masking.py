"""Which prompt tokens a corruption touches, located through the tokenizer's offsets.

Shared by every backend: a row's mask depends only on the tokenizer and the rendered
chat, never on what serves the model. Token positions come from ``offset_mapping`` over
the rendered text, so any tokenizer with offsets works (SentencePiece's ``▁`` pieces and
byte-level BPE's ``Ġ`` pieces alike); a token is masked when its characters overlap a
span to corrupt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..entities import name_spans
from .base import MaskSpec, Messages
from .messages import normalize_messages
from .templating import ChatFormat

Span = tuple[int, int]


@dataclass(frozen=True)
class PreparedPrompt:
    """A templated prompt: its token ids and which of them a corruption may touch."""

    input_ids: list[int]
    mask: list[bool]


def prepare_prompt(chat_format: ChatFormat, messages: Messages, mask_spec: MaskSpec = MaskSpec()) -> PreparedPrompt:
    """Template ``messages`` and mark the tokens ``mask_spec`` selects."""
    msgs = normalize_messages(messages)
    rendered = chat_format.render(msgs)
    text, spans = rendered.text, rendered.user_spans
    if mask_spec.scope == "entities":
        entity = term_spans(text, spans, mask_spec.terms) + names_in(text, spans)
        spans = entity or spans  # nothing to name: corrupt the user turns (fail closed)
    enc = chat_format.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    if mask_spec.scope == "all":
        return PreparedPrompt(ids, [True] * len(ids))
    return PreparedPrompt(ids, token_mask(enc["offset_mapping"], spans))


def token_mask(offsets: Sequence[Sequence[int]], spans: Sequence[Span]) -> list[bool]:
    """True for each token whose characters overlap one of ``spans``."""
    return [any(s < e_tok and s_tok < e for s, e in spans) for s_tok, e_tok in offsets]


def term_spans(text: str, user_spans: Sequence[Span], terms: Sequence[str]) -> list[Span]:
    """Case-insensitive occurrences of ``terms`` inside the user turns."""
    lowered = text.lower()
    found: list[Span] = []
    for term in terms:
        needle = term.lower().strip()
        if not needle:
            continue
        for s0, e0 in user_spans:
            i = lowered.find(needle, s0, e0)
            while i >= 0:
                found.append((i, i + len(needle)))
                i = lowered.find(needle, i + 1, e0)
    return found


def names_in(text: str, user_spans: Sequence[Span]) -> list[Span]:
    """Names and titles inside the user turns, found in the prompt itself (``entities.py``)."""
    return [(s0 + s, s0 + e) for s0, e0 in user_spans for s, e in name_spans(text[s0:e0])]

