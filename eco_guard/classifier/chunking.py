"""Cut long passages into sentence windows before scoring them.

The classifier was fitted on prompt-sized texts, and a retrieved passage can be pages
long: the encoder truncates after a few hundred word pieces, and one mean-pooled vector
of a long passage dilutes a single sentence about a forget target into noise. Scoring
overlapping windows of a few sentences and taking the maximum keeps such a sentence
visible wherever it sits in the passage.
"""

from __future__ import annotations

import re

WINDOW_SENTENCES = 3
"""Sentences per window: enough context to resolve "she" or "the book" inside a passage,
short enough to stay near the length of the prompts the heads were fitted on."""

STRIDE_SENTENCES = 2
"""Windows overlap by one sentence, so no two adjacent sentences are only ever seen apart."""

MAX_WINDOW_WORDS = 120
"""Longer windows (run-on sentences, tables, code) are cut by words; well under the
encoder's 256-word-piece limit so nothing is silently truncated."""

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n")


def sentence_windows(text: str) -> list[str]:
    """Overlapping windows of a passage; a short passage is its own single window.

    Always returns at least one element (the stripped text, possibly empty) so that
    callers can map every passage to at least one score.
    """
    stripped = text.strip()
    sentences = [s.strip() for s in _SENTENCE_END.split(stripped) if s and s.strip()]
    if len(sentences) <= WINDOW_SENTENCES and len(stripped.split()) <= MAX_WINDOW_WORDS:
        return [stripped]
    windows: list[str] = []
    last_start = max(len(sentences) - WINDOW_SENTENCES, 0)
    starts = list(range(0, last_start + 1, STRIDE_SENTENCES))
    if starts[-1] != last_start:
        starts.append(last_start)  # the tail must be covered by a full window too
    for start in starts:
        windows.extend(_cap_words(" ".join(sentences[start : start + WINDOW_SENTENCES])))
    return windows


def _cap_words(window: str) -> list[str]:
    """Split a window that is too long into overlapping word slices of at most MAX_WINDOW_WORDS."""
    words = window.split()
    if len(words) <= MAX_WINDOW_WORDS:
        return [window]
    step = MAX_WINDOW_WORDS // 2
    return [" ".join(words[i : i + MAX_WINDOW_WORDS]) for i in range(0, max(len(words) - step, 1), step)]
